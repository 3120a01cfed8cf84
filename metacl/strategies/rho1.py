"""RHO-1 selective language modelling (Lin et al. 2024): train on the tokens that matter.

    excess_t = nll_t(model) - nll_t(reference)         reference = ctx.reference_model()
    w_t      = 1 if excess_t is among the top k% of the batch's target tokens, else 0

The loop then minimises sum(w * nll) / sum(w): only the selected tokens carry gradient.
Why: tokens the current model already predicts as well as the reference (or that are noise
for both) waste capacity; tokens with high excess loss are the learnable ones. Our reference
is the frozen model at task start (no separately trained reference exists in continual
learning), so the excess loss measures what the current model got worse at or has not yet
learned relative to where it started. Weights are binary and multiply with other strategies'
token weights (`--strategy taalm rho1`).

Hyperparameters: --rho1-ratio (fraction k of target tokens kept per batch).
"""

from __future__ import annotations

import argparse
import math

import torch

from metacl.engine.losses import label_mask, token_nll
from metacl.errors import MetaclError
from metacl.strategies.base import Batch, Strategy, TrainContext, register


def select_top_excess(excess: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, T) 0/1 weights: the ceil(ratio * n_valid) valid positions with the largest excess."""
    valid = mask > 0
    n_valid = int(valid.sum())
    k = min(n_valid, math.ceil(ratio * n_valid))
    w = torch.zeros_like(excess, dtype=torch.float32)
    if k == 0:
        return w
    scores = excess.float().masked_fill(~valid, float("-inf")).flatten()
    idx = torch.topk(scores, k).indices
    w.view(-1)[idx] = 1.0
    return w


@register
class Rho1(Strategy):
    name = "rho1"
    description = "RHO-1: train only on the top-k% tokens by excess loss over the task-start reference model"

    def __init__(self, rho1_ratio: float = 0.6):
        if not (0 < rho1_ratio <= 1):
            raise MetaclError(f"--rho1-ratio must be in (0, 1], got {rho1_ratio}; pass e.g. --rho1-ratio 0.6")
        self.ratio = float(rho1_ratio)

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rho1-ratio", type=float, default=0.6, help="fraction of target tokens trained on per batch")

    def before_task(self, ctx: TrainContext) -> None:
        ctx.reference_model()  # freeze the reference before the first step of the task

    def token_weights(self, ctx: TrainContext, batch: Batch, nll: torch.Tensor) -> torch.Tensor | None:
        with torch.no_grad():
            ref_nll = token_nll(ctx.reference_model(), batch)
        if ref_nll.shape != nll.shape:  # loop aligned its NLL without the leading column
            ref_nll = ref_nll[:, ref_nll.shape[1] - nll.shape[1]:]
            mask = label_mask(batch)[:, -nll.shape[1]:]
        else:
            mask = label_mask(batch)
        w = select_top_excess(nll.detach() - ref_nll, mask, self.ratio)
        ctx.scratch.setdefault(self.name, {})["selected_fraction"] = float(w.sum() / mask.sum().clamp_min(1))
        return w
