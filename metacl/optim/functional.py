"""The learned optimizer as a `metacl.engine.FunctionalOptimizer` (used for meta-training).

`LearnedFunctional(meta, cfg).update(params, grads, state, step)` is out-of-place and
differentiable in `meta`: run it inside `metacl.engine.unroll` and the meta-loss after the
unroll backpropagates into the meta-parameters. The state is a pytree of tensors:

    {"t": step count, "t_task": steps since the last task boundary,
     "tensors": {name: {"m0", "m1", "m2", "v", "imp", ["imp_prev", "anchor"]}}}

`consolidate(params, state)` marks the end of a task (the continual-learning signal the network
reads through the old-task importance and drift features) and restarts the "fraction of
training done" clock, which is measured per task: `total_steps` means steps per task.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metacl.optim import features as fe
from metacl.optim import network as nw


def compute_updates(
    meta: dict[str, Tensor],
    cfg: nw.NetConfig,
    entries: list[tuple[Tensor, Tensor, dict[str, Tensor]]],
    t: float,
    frac: float,
    rates: list | None = None,
) -> list[Tensor]:
    """Updates (same shapes as the params) for `entries` = [(param, grad, advanced_state), ...].

    Full-tensor version: right for meta-training on small models. The `torch.optim` wrapper
    does the same thing chunk by chunk. `rates`: if a list, it receives each tensor's rate of the
    importance-weighted pull (`network.pull_rates`; None per tensor without `imp_pull`).
    """
    scal = [fe.tensor_scalars(p, g, st, t) for p, g, st in entries]
    tokens = torch.stack([fe.tensor_token(p, g, st, sc, frac) for (p, g, st), sc in zip(entries, scal)])
    ctx = nw.tensor_context(meta, cfg, tokens)
    cond, log_s = nw.tensor_conditioning(meta, ctx, cfg)
    if rates is not None:
        rho = nw.pull_rates(meta, cfg, ctx)
        rates.extend([None] * len(entries) if rho is None else list(rho.unbind(0)))
    out = []
    for i, ((p, g, st), sc) in enumerate(zip(entries, scal)):
        if cfg.head == "linear":
            u = nw.linear_update(meta, fe.param_features(p, g, st, sc, clamp=False), cond[i], log_s[i])
        else:
            u = nw.param_update(meta, cfg, fe.param_features(p, g, st, sc), cond[i], log_s[i])
        out.append(u.view_as(p).to(p.dtype))
    return out


class LearnedFunctional:
    """Functional learned optimizer closing over `meta` (tensors that may require grad).

    `total_steps` (steps per task) sets the "fraction of training done" feature; `lr` multiplies every update.
    """

    def __init__(self, meta: dict[str, Tensor], cfg: nw.NetConfig, total_steps: int = 1000, lr: float | Tensor = 1.0):
        self.meta, self.cfg, self.total_steps, self.lr = meta, cfg, max(1, int(total_steps)), lr

    def init(self, params: dict[str, Tensor]) -> dict[str, Any]:
        return {
            "t": torch.zeros(()),
            "t_task": torch.zeros(()),
            "tensors": {n: fe.start_state(p.detach(), self.cfg.anchor_start) for n, p in params.items()},
        }

    def update(self, params: dict[str, Tensor], grads: dict[str, Tensor | None], state: dict[str, Any], step: int = 0):
        t = float(state["t"]) + 1.0
        t_task = float(state["t_task"]) + 1.0
        names = [n for n in params if grads.get(n) is not None]
        new_states = dict(state["tensors"])
        entries = []
        for n in names:
            new_states[n] = fe.advance_state(params[n], grads[n], state["tensors"][n])
            entries.append((params[n], grads[n], new_states[n]))
        new_params = dict(params)
        if entries:
            frac = min(1.0, (t_task - 1) / self.total_steps)
            rates: list = []
            updates = compute_updates(self.meta, self.cfg, entries, t, frac, rates)
            for n, u, rho in zip(names, updates, rates):
                p = params[n] - self.lr * u
                st = new_states[n]
                if rho is not None and "imp_prev" in st:  # after the step, the pull back (NetConfig.imp_pull)
                    p = p - rho * fe.pull_ratio(st["imp_prev"]) * (p - st["anchor"])
                new_params[n] = p
        return new_params, {"t": torch.tensor(t), "t_task": torch.tensor(t_task), "tensors": new_states}

    def prime(self, params: dict[str, Tensor], state: dict[str, Any], importance: dict[str, Tensor]) -> dict[str, Any]:
        """Before the first step: old-task importance measured on old data (`features.prime_tensor`)."""
        tensors = dict(state["tensors"])
        for n, imp in importance.items():
            if n in tensors:
                tensors[n] = fe.prime_tensor(params[n].detach(), tensors[n], imp.detach())
        return {**state, "tensors": tensors}

    def consolidate(self, params: dict[str, Tensor], state: dict[str, Any]) -> dict[str, Any]:
        """End of a task: old-task importance and anchors for the retention features."""
        tensors = {n: fe.consolidate_tensor(params[n], st) for n, st in state["tensors"].items()}
        return {"t": state["t"], "t_task": torch.zeros(()), "tensors": tensors}
