"""Progressive adapters: a new adapter column per task, lateral connections, old columns frozen.

Why: progressive networks (Rusu et al., 2016) never forget by construction: every task gets a
fresh column, earlier columns are frozen, and lateral connections let the new column reuse their
features. Copying a whole LM per task is out of reach, so, as documented here, the columns are
bottleneck adapters on top of a frozen base LM (one per decoder-layer MLP):

    z_k = relu(D_k x + sum_{j<k} L_kj z_j)          bottleneck of column k (lateral inputs z_j)
    mlp'(x) = mlp(x) + sum_k U_k z_k                 every column's output is added

x is the MLP input of that layer. At task k, column k (D_k, U_k and its laterals L_kj) is new
and trainable; the base LM and columns 0..k-1 are frozen and stay bit-identical. U_k starts at
zero, so adding a column does not change the model's function. No task identity is needed at
inference: all columns are active, which is what the probes of every period see.

Hyperparameters: --progressive-width (bottleneck size per column).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from metacl.errors import MetaclError
from metacl.strategies.base import Strategy, TrainContext, register


class Column(nn.Module):
    """One task's adapter at one layer: down-projection, lateral maps from earlier columns, up-projection."""

    def __init__(self, d_model: int, width: int, n_earlier: int, generator: torch.Generator | None, dtype, device):
        super().__init__()
        bound = 1.0 / math.sqrt(d_model)
        self.down = nn.Parameter(torch.empty(width, d_model, dtype=dtype).uniform_(-bound, bound, generator=generator).to(device))
        lb = 1.0 / math.sqrt(width)
        self.lateral = nn.ParameterList(
            nn.Parameter(torch.empty(width, width, dtype=dtype).uniform_(-lb, lb, generator=generator).to(device))
            for _ in range(n_earlier)
        )
        self.up = nn.Parameter(torch.zeros(d_model, width, dtype=dtype, device=device))


class ProgressiveMLP(nn.Module):
    """A frozen MLP plus progressive adapter columns reading the MLP input."""

    def __init__(self, mlp: nn.Module, d_model: int, width: int):
        super().__init__()
        self.mlp, self.d_model, self.width = mlp, d_model, width
        self.columns = nn.ModuleList()

    def add_column(self, generator: torch.Generator | None = None) -> Column:
        ref = next(self.mlp.parameters())
        col = Column(self.d_model, self.width, len(self.columns), generator, ref.dtype, ref.device)
        self.columns.append(col)
        return col

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        zs: list[torch.Tensor] = []
        for col in self.columns:
            h = x @ col.down.T
            for L, z in zip(col.lateral, zs):
                h = h + z @ L.T
            z = torch.relu(h)
            zs.append(z)
            y = y + z @ col.up.T
        return y


def wrap_mlps(model: nn.Module, width: int) -> list[ProgressiveMLP]:
    """Wrap each decoder layer's `mlp` once; return the wrappers in layer order."""
    found = [m for m in model.modules() if isinstance(m, ProgressiveMLP)]
    if found:
        return found
    d_model = getattr(getattr(model, "config", None), "hidden_size", None)
    for mod in list(model.modules()):
        if hasattr(mod, "self_attn") and isinstance(getattr(mod, "mlp", None), nn.Module):
            if d_model is None:
                raise MetaclError("progressive needs model.config.hidden_size; use a Hugging Face causal LM")
            mod.mlp = ProgressiveMLP(mod.mlp, d_model, width)
            found.append(mod.mlp)
    if not found:
        raise MetaclError("progressive found no decoder layers (modules with self_attn and mlp); use a Llama-style model")
    return found


@register
class Progressive(Strategy):
    name = "progressive"
    description = "progressive adapters: a new adapter column per task with laterals; base and old columns frozen"

    def __init__(self, progressive_width: int = 32):
        if int(progressive_width) < 1:
            raise MetaclError(f"--progressive-width must be >= 1, got {progressive_width}; pass e.g. --progressive-width 32")
        self.width = int(progressive_width)

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--progressive-width", type=int, default=32, help="bottleneck width of each column")

    def before_task(self, ctx: TrainContext) -> None:
        mlps = wrap_mlps(ctx.model, self.width)
        for p in ctx.model.parameters():
            p.requires_grad_(False)
        for m in mlps:
            for p in m.add_column(ctx.generator).parameters():
                p.requires_grad_(True)
