"""Functional, differentiable optimizers for inner loops.

Why not `torch.optim`: its `step()` mutates parameters in place under `no_grad`, which cuts
the graph a meta-gradient needs. Here an optimizer is a pair of pure functions:

    state = opt.init(params)
    new_params, new_state = opt.update(params, grads, state, step)

Nothing is modified in place, so autograd sees every update and the meta-gradient can flow
into the initial params, into anything the grads depend on (token weights, a predictor's
output), and into the optimizer's own tensors (a tensor learning rate, a learned optimizer's
network). `step` is the 0-based index of the update (AdamW's bias correction uses step + 1).

Any object with these two methods works with `metacl.engine.unroll`; a learned optimizer
implements the same protocol with its meta-parameters closed over.
"""

from __future__ import annotations

from typing import Any, Protocol, Union, runtime_checkable

import torch
from torch import Tensor

from metacl.errors import MetaclError

Params = dict[str, Tensor]
LR = Union[float, Tensor, dict[str, Union[float, Tensor]]]


@runtime_checkable
class FunctionalOptimizer(Protocol):
    """What `unroll` needs from an optimizer: pure `init` and `update`."""

    def init(self, params: Params) -> dict[str, Any]:  # a pytree of tensors
        ...

    def update(self, params: Params, grads: Params, state: dict[str, Any], step: int) -> tuple[Params, dict[str, Any]]:
        ...


def _lr_for(lr: LR, name: str) -> float | Tensor:
    """Pick the learning rate of one parameter; a dict gives learnable per-tensor rates."""
    if isinstance(lr, dict):
        if name not in lr:
            raise MetaclError(
                f"learning-rate dict has no entry for parameter '{name}'; give one rate per updated parameter "
                f"(known: {sorted(lr)[:5]}...)"
            )
        return lr[name]
    return lr


def _check_lr(lr: LR) -> None:
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        if lr < 0:
            raise MetaclError(f"learning rate {lr} is negative; pass lr >= 0")
        return
    if isinstance(lr, (Tensor, dict)):
        return
    raise MetaclError(f"learning rate of type {type(lr).__name__} is not supported; pass a float, a tensor or a dict name->tensor")


class sgd:  # noqa: N801 - lower case on purpose: used like a function, `sgd(lr=0.1)`
    """SGD with optional momentum and L2 weight decay, matching `torch.optim.SGD` (dampening 0).

    Momentum buffers start at zero, so the first update uses the plain gradient, as in torch.
    """

    def __init__(self, lr: LR, momentum: float = 0.0, weight_decay: float = 0.0):
        _check_lr(lr)
        if not 0.0 <= momentum < 1.0:
            raise MetaclError(f"sgd momentum {momentum} is outside [0, 1); pass e.g. momentum=0.9")
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def init(self, params: Params) -> dict[str, Any]:
        if self.momentum == 0.0:
            return {}
        return {"momentum": {k: torch.zeros_like(v) for k, v in params.items()}}

    def update(self, params: Params, grads: Params, state: dict[str, Any], step: int) -> tuple[Params, dict[str, Any]]:
        new_params, new_buf = {}, {}
        for k, p in params.items():
            d = grads[k]
            if self.weight_decay:
                d = d + self.weight_decay * p
            if self.momentum:
                d = self.momentum * state["momentum"][k] + d
                new_buf[k] = d
            new_params[k] = p - _lr_for(self.lr, k) * d
        return new_params, ({"momentum": new_buf} if self.momentum else {})

    def __repr__(self) -> str:
        return f"sgd(lr={self.lr!r}, momentum={self.momentum}, weight_decay={self.weight_decay})"


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt whose derivative is 0 (not inf) at 0.

    Why: a parameter row that got no gradient (an embedding row absent from the batch) has
    second moment exactly 0; d sqrt(v)/dv = inf there and inf * 0 = NaN would poison the whole
    meta-gradient. Clamping at the smallest normal number makes the derivative 0 below it;
    the value changes only where v < tiny (1e-38 in float32), far below AdamW's eps. Two
    elementwise ops (not a masked where) keep the double-backward graph small.
    """
    return x.clamp_min(torch.finfo(x.dtype).tiny).sqrt()


class adamw:  # noqa: N801
    """AdamW with decoupled weight decay, matching `torch.optim.AdamW` (no amsgrad).

    With weight_decay=0 it is exactly Adam. `lr` may be a float, a tensor, or a dict of
    per-parameter tensors; all of them receive meta-gradients when they require grad.
    """

    def __init__(self, lr: LR = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        _check_lr(lr)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise MetaclError(f"adamw betas {betas} must lie in [0, 1); pass e.g. betas=(0.9, 0.999)")
        if eps <= 0:
            raise MetaclError(f"adamw eps {eps} must be > 0; pass e.g. eps=1e-8")
        self.lr, self.betas, self.eps, self.weight_decay = lr, (b1, b2), eps, weight_decay

    def init(self, params: Params) -> dict[str, Any]:
        return {
            "exp_avg": {k: torch.zeros_like(v) for k, v in params.items()},
            "exp_avg_sq": {k: torch.zeros_like(v) for k, v in params.items()},
        }

    def update(self, params: Params, grads: Params, state: dict[str, Any], step: int) -> tuple[Params, dict[str, Any]]:
        b1, b2 = self.betas
        t = step + 1
        bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
        new_params, m_new, v_new = {}, {}, {}
        for k, p in params.items():
            g, lr = grads[k], _lr_for(self.lr, k)
            if self.weight_decay:
                p = p * (1.0 - lr * self.weight_decay)
            m = b1 * state["exp_avg"][k] + (1.0 - b1) * g
            v = b2 * state["exp_avg_sq"][k] + (1.0 - b2) * g * g
            denom = _safe_sqrt(v) / (bc2**0.5) + self.eps
            new_params[k] = p - (lr / bc1) * m / denom
            m_new[k], v_new[k] = m, v
        return new_params, {"exp_avg": m_new, "exp_avg_sq": v_new}

    def __repr__(self) -> str:
        return f"adamw(lr={self.lr!r}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay})"
