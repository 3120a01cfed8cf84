"""O-LoRA: a new LoRA per task, orthogonal to the frozen LoRAs of earlier tasks (Wang et al., 2023).

Why: one shared LoRA is overwritten task after task. O-LoRA gives every task its own low-rank
update and pushes the new one's input subspace (the rows of A) away from the old ones', so the
new update barely touches the inputs the old updates respond to.

Each target linear layer becomes  y = W0 x + sum_i (alpha / r) B_i A_i x,  with A_i (r x in) and
B_i (out x r). At task t a new (A_t, B_t) is added (A_t random, B_t = 0 so the function is
unchanged); W0 and every earlier (A_i, B_i) are frozen. The loss gains

    lambda1 * sum_layers sum_{i<t} sum_{jk} |(A_i A_t^T)_{jk}|

which is 0 exactly when every row of A_t is orthogonal to every row of every earlier A_i.
We use our own small wrapper (not peft) because peft trains one active adapter at a time.
The adapters stay as separate parameters (no merging), so inference keeps them.

Hyperparameters: --olora-rank, --olora-alpha, --olora-lambda (lambda1), --olora-targets.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metacl.errors import MetaclError
from metacl.strategies.base import Batch, Option, Strategy, TrainContext, register


class MultiLoRALinear(nn.Module):
    """A frozen linear layer plus a list of LoRA updates; only the last one is meant to train."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.rank, self.scale = base, rank, alpha / rank
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()

    def add_adapter(self, generator: torch.Generator | None = None) -> None:
        w = self.base.weight
        A = torch.empty(self.rank, self.base.in_features, dtype=w.dtype)
        bound = 1.0 / math.sqrt(self.base.in_features)  # kaiming-uniform(a=sqrt(5)) bound, as nn.Linear
        A.uniform_(-bound, bound, generator=generator)
        self.A.append(nn.Parameter(A.to(w.device)))
        self.B.append(nn.Parameter(torch.zeros(self.base.out_features, self.rank, dtype=w.dtype, device=w.device)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for A, B in zip(self.A, self.B):
            y = y + self.scale * ((x @ A.T) @ B.T)
        return y


def orthogonality_loss(As: list[torch.Tensor], current: torch.Tensor) -> torch.Tensor:
    """sum_{i} sum |A_i A_t^T| for frozen A_i against the current A_t."""
    total = current.new_zeros(())
    for A in As:
        total = total + (A.detach() @ current.T).abs().sum()
    return total


def wrap_targets(model: nn.Module, targets: list[str], rank: int, alpha: float) -> list[MultiLoRALinear]:
    """Replace every nn.Linear whose attribute name is in `targets` by a MultiLoRALinear (once)."""
    wrapped = [m for m in model.modules() if isinstance(m, MultiLoRALinear)]
    if wrapped:
        return wrapped
    for _, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                w = MultiLoRALinear(child, rank, alpha)
                setattr(parent, child_name, w)
                wrapped.append(w)
    if not wrapped:
        raise MetaclError(f"O-LoRA found no nn.Linear named {', '.join(targets)}; pass --olora-targets with names "
                          "of the model's linear layers (e.g. q_proj v_proj)")
    return wrapped


@register
class OLoRA(Strategy):
    name = "olora"
    description = "O-LoRA: a new LoRA per task, old ones frozen, loss + lambda1 * sum |A_old A_new^T|"

    def __init__(self, olora_rank: int = 8, olora_alpha: float = 16.0, olora_lambda: float = 0.5,
                 olora_targets: list[str] | None = None):
        if int(olora_rank) < 1:
            raise MetaclError(f"--olora-rank must be >= 1, got {olora_rank}; pass e.g. --olora-rank 8")
        if float(olora_lambda) < 0:
            raise MetaclError(f"--olora-lambda must be >= 0, got {olora_lambda}; pass e.g. --olora-lambda 0.5")
        self.rank, self.alpha, self.lam = int(olora_rank), float(olora_alpha), float(olora_lambda)
        self.targets = list(olora_targets or ["q_proj", "v_proj"])
        self.layers: list[MultiLoRALinear] = []

    options = {
        "olora_rank": Option("rank r of each task's LoRA"),
        "olora_alpha": Option('LoRA scale alpha (update = alpha/r B A)'),
        "olora_lambda": Option('weight lambda1 of the orthogonality loss'),
        "olora_targets": Option('linear layers to adapt', nargs='+'),
    }

    def before_task(self, ctx: TrainContext) -> None:
        self.layers = wrap_targets(ctx.model, self.targets, self.rank, self.alpha)
        for p in ctx.model.parameters():
            p.requires_grad_(False)
        for lin in self.layers:
            lin.add_adapter(ctx.generator)
            lin.A[-1].requires_grad_(True)
            lin.B[-1].requires_grad_(True)

    def extra_loss(self, ctx: TrainContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        if self.lam == 0 or not self.layers or len(self.layers[0].A) < 2:
            return None
        total = sum(orthogonality_loss(list(lin.A[:-1]), lin.A[-1]) for lin in self.layers)
        return self.lam * total
