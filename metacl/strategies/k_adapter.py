"""K-Adapter-style knowledge adapters (Wang et al. 2021): new knowledge goes into adapters
beside a frozen base model.

Every feed-forward block (`*.mlp`) of the model is wrapped so that

    mlp'(h) = mlp(h) + U act(D h)         D: hidden -> r,   U: r -> hidden,  U initialised to 0

and every base parameter gets `requires_grad=False`. Why: the base weights, and so everything
the pre-trained model knew, stay bit-for-bit unchanged; only the small adapters (2 * hidden * r
weights per layer) learn the new documents. U = 0 at the start makes the wrapped model compute
exactly what the base computed, so probing before training is unaffected. We use parallel
bottleneck adapters inside each layer rather than K-Adapter's separate outside stack: the same
idea (a frozen base plus a trainable knowledge module) in the form that fits any HF causal LM.

Hyperparameters: --k-adapter-rank (bottleneck r).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from metacl.errors import MetaclError
from metacl.strategies.base import Strategy, TrainContext, register


class ParallelAdapter(nn.Module):
    """A feed-forward block plus a zero-initialised bottleneck adapter in parallel."""

    def __init__(self, mlp: nn.Module, hidden: int, rank: int):
        super().__init__()
        self.mlp = mlp
        self.down = nn.Linear(hidden, rank)
        self.up = nn.Linear(rank, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        ref = next(mlp.parameters())
        self.down.to(device=ref.device, dtype=ref.dtype)
        self.up.to(device=ref.device, dtype=ref.dtype)

    def forward(self, h: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.mlp(h, *args, **kwargs) + self.up(torch.nn.functional.gelu(self.down(h)))


def add_adapters(model: nn.Module, rank: int) -> list[str]:
    """Freeze `model` and wrap each `*.mlp` block with a ParallelAdapter; returns wrapped names."""
    targets = [n for n, m in model.named_modules() if n.split(".")[-1] == "mlp" and not isinstance(m, ParallelAdapter)]
    if not targets:
        raise MetaclError(f"k_adapter found no `mlp` blocks in {type(model).__name__}; use a Llama/GPT-style causal LM")
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        mlp = getattr(parent, child)
        h = hidden or next(m for m in mlp.modules() if isinstance(m, nn.Linear)).in_features
        setattr(parent, child, ParallelAdapter(mlp, h, rank))
    return targets


@register
class KAdapter(Strategy):
    name = "k_adapter"
    description = "K-Adapter: frozen base, knowledge learned by zero-initialised bottleneck adapters"

    def __init__(self, k_adapter_rank: int = 16):
        if k_adapter_rank < 1:
            raise MetaclError(f"--k-adapter-rank must be >= 1, got {k_adapter_rank}; pass e.g. --k-adapter-rank 16")
        self.rank = int(k_adapter_rank)

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--k-adapter-rank", type=int, default=16, help="adapter bottleneck size r")

    def before_task(self, ctx: TrainContext) -> None:
        if not any(isinstance(m, ParallelAdapter) for m in ctx.model.modules()):
            wrapped = add_adapters(ctx.model, self.rank)
            ctx.scratch.setdefault(self.name, {})["wrapped"] = wrapped
