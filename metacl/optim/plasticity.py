"""A meta-objective term that prices plasticity: learning less than AdamW inside an episode costs.

Why: with retention in the meta-loss, an optimizer that barely moves forgets nothing; on the lm
family such weights kept NF 0.998 but learned TL 0.287 against AdamW's 0.347, close to a model that
never trains (TL 0.250) (issue 15). The retention term rewards standing still; nothing charges
for it. This term does: for every task i of an episode it compares the learned optimizer's
held-out *new-task* loss right after task i (TL_i) with what AdamW reaches on the very same
episode (same start, same batches, lr `plasticity_lr`), and charges the shortfall:

    hinge:  sum_i relu(TL_i - TL_i^AdamW)            (loss units; what is learned below AdamW)
    ratio:  sum_i relu(TL_i / TL_i^AdamW - 1)         (scale-free: 2- and 10-class tasks weigh alike)

It is a constraint, not a target: once the optimizer learns as well as AdamW the term is 0 and the
rest of the meta-loss (retention of earlier tasks and, in the lm family, of the old world's facts
in every held-out batch) decides. TL_i uses the episode's `tl_loss_fn` when it has one (lm family:
the new-fact probes only, without the old-world probes), else its whole held-out loss. The AdamW
run has no graph (its losses are constants) and is cached on the episode, so ES pairs reuse it.
Weight it with `MetaTrainConfig.plasticity` (0 = off, the default); what it buys is to be measured.
"""

from __future__ import annotations

import torch
from torch import Tensor

FORMS = ("hinge", "ratio")


def tl_loss(ep, params: dict[str, Tensor], i: int) -> Tensor:
    """Held-out new-task loss of task i (the TL surrogate)."""
    fn = getattr(ep, "tl_loss_fn", None) or ep.loss_fn
    return fn(ep.model, params, ep.tasks[i][1])


def reference_tl(ep, cfg) -> list[Tensor]:
    """AdamW's TL_i after each task of `ep` (constants), cached on the episode per lr."""
    from metacl.engine import adamw, unroll

    lr = cfg.plasticity_lr if cfg.plasticity_lr is not None else cfg.baseline_lr
    cache = ep.__dict__.setdefault("_reference_tl", {})
    if lr in cache:
        return cache[lr]
    opt = adamw(lr=lr)
    params, state, step, out = ep.params, None, 0, []
    with torch.enable_grad():  # unroll takes the inner gradients itself; nothing here is kept
        for i, (batches, _) in enumerate(ep.tasks):
            state = opt.init(params) if state is None else state
            params, state = unroll(ep.model, params, ep.loss_fn, batches, optimizer=opt, first_order=True,
                                   state=state, start_step=step)
            params = {k: v.detach() for k, v in params.items()}
            step += len(batches)
            with torch.no_grad():
                out.append(tl_loss(ep, params, i).detach())
    cache[lr] = out
    return out


def penalty(tl: list[Tensor], ref: list[Tensor], form: str = "hinge") -> Tensor:
    """The plasticity shortfall summed over tasks (0 when every TL_i <= AdamW's)."""
    if form not in FORMS:
        raise ValueError(f"plasticity form {form!r}: use one of {', '.join(FORMS)}")
    terms = []
    for a, b in zip(tl, ref):
        b = b.detach()
        gap = a - b if form == "hinge" else a / b.clamp_min(1e-8) - 1.0
        terms.append(torch.relu(gap))
    return torch.stack(terms).sum()
