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

from metacl.engine import adamw_kernels, flat_params
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


def _adamw_ops(p, g, m, v, lr, b1, b2, eps, weight_decay, bc1, bc2):
    """One AdamW update in ordinary differentiable ops (used when `lr` is a tensor)."""
    if weight_decay:
        p = p * (1.0 - lr * weight_decay)
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g * g
    denom = _safe_sqrt(v) / (bc2**0.5) + eps
    return p - (lr / bc1) * m / denom, m, v


def _may_be_below(v: Tensor, tiny: float) -> bool:
    """False only if surely no entry of v is below tiny (checked on CPU, where a min is cheap and syncs nothing)."""
    if v.device.type != "cpu" or torch._C._functorch.is_batchedtensor(v):
        return True
    return bool(v.amin() < tiny)


class _AdamWStep(torch.autograd.Function):
    """(p, g, m, v) -> (p', m', v'): one AdamW update of one tensor with a hand-written backward.

    Why: written with ordinary ops an update is ~14 elementwise kernels, each with a fresh
    full-size output, and autograd keeps ~8 of them for the meta-gradient and runs ~25 more
    kernels in backward. In a meta-step that differentiates through per-example copies of a
    whole LM, these passes over memory (and the page faults of fresh allocations) cost more
    than the matmuls. Here the forward is 7 kernels, only (g, m', v', s = sqrt(max(v', tiny)))
    are kept, and the backward is the closed-form derivative in ~12 mostly in-place kernels
    (work is skipped for inputs that need no gradient: first-order steps only pass the
    gradient to p through; the v' < tiny mask is applied only where such entries exist).

    Math, with d = sqrt(max(v', tiny)) / sqrt(bc2) + eps and c = lr / bc1:
        m' = b1 m + (1-b1) g,  v' = b2 v + (1-b2) g^2,  p' = decay * p - c m' / d
        dm' = gm - c gp / d
        dv' = gv + c gp m' / (d^2 * 2 sqrt(v') sqrt(bc2))   (0 where v' < tiny, as `_safe_sqrt`)
        dg  = (1-b1) dm' + 2 (1-b2) g dv',  dm = b1 dm',  dv = b2 dv',  dp = decay * gp
    When a graph of the backward is recorded (an outer `create_graph=True`), the backward
    switches to out-of-place ops of saved inputs/outputs only, so it is differentiable again.
    `generate_vmap_rule` lets it run inside `unroll(per_example="vmap")`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(p, g, m, v, step_size, b1, b2, eps, bc2_sqrt, decay):
        if adamw_kernels.usable(p, g, m, v):
            out = adamw_kernels.forward(p, g, m, v, step_size, b1, b2, eps, bc2_sqrt, decay)
            if out is not None:
                return out
        m_new = torch.lerp(m, g, 1.0 - b1)
        v_new = torch.addcmul(v * b2, g, g, value=1.0 - b2)
        d = v_new.clamp_min(torch.finfo(v_new.dtype).tiny).sqrt_().div_(bc2_sqrt).add_(eps)
        p_new = torch.addcdiv(p * decay if decay != 1.0 else p, m_new, d, value=-step_size)
        return p_new, m_new, v_new

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, g, _, v_in, step_size, b1, b2, eps, bc2_sqrt, decay = inputs
        ctx.save_for_backward(g, output[1], output[2])
        ctx.hyper = (step_size, b1, b2, eps, bc2_sqrt, decay)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gp, gm, gv):
        g, m_new, v_new = ctx.saved_tensors
        step_size, b1, b2, eps, bc2_sqrt, decay = ctx.hyper
        need_p, need_g, need_m, need_v = ctx.needs_input_grad[:4]
        none = (None,) * 6
        dp = None
        if need_p and gp is not None:
            dp = gp * decay if decay != 1.0 else gp
        if not (need_g or need_m or need_v):
            return (dp, None, None, None, *none)
        tiny = torch.finfo(v_new.dtype).tiny
        if torch.is_grad_enabled():  # a recorded backward (create_graph): out-of-place, s re-derived from v'
            return (dp, *adamw_kernels.adamw_backward(gp, gm, gv, g, m_new, v_new, step_size, b1, b2, eps, bc2_sqrt,
                                                      need_g, need_m, need_v), *none)
        if adamw_kernels.usable(g, gp, gm, gv, m_new, v_new):
            out = adamw_kernels.backward(gp, gm, gv, g, m_new, v_new, step_size, b1, b2, eps, bc2_sqrt,
                                         need_g, need_m, need_v)
            if out is not None:
                return (dp, *out, *none)
        if gp is not None:
            s = v_new.clamp_min(tiny).sqrt()
            d = (s / bc2_sqrt).add_(eps)
            q = gp / d
            dm_new = q * (-step_size) if gm is None else torch.add(gm, q, alpha=-step_size)
            r = q.mul_(m_new).div_(d).div_(s).mul_(step_size / (2.0 * bc2_sqrt))
            if _may_be_below(v_new, tiny):  # `_safe_sqrt`: no derivative where v' < tiny
                r.masked_fill_(v_new < tiny, 0.0)
            dv_new = r if gv is None else r.add_(gv)
        else:
            dm_new, dv_new = gm, gv
        dg = None
        if need_g:
            if dv_new is not None:
                dg = (g * dv_new).mul_(2.0 * (1.0 - b2))
                if dm_new is not None:
                    dg.add_(dm_new, alpha=1.0 - b1)
            elif dm_new is not None:
                dg = dm_new * (1.0 - b1)
        dm = dm_new.mul_(b1) if need_m and dm_new is not None else None  # dm' is no longer needed: scale in place
        dv = dv_new.mul_(b2) if need_v and dv_new is not None else None
        return (dp, dg, dm, dv, *none)


def _apply_adamw_step(*args: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`_AdamWStep.apply`, minus `inspect.signature` binding on every call outside torch.func transforms.

    Why: `Function.apply` binds default arguments with `inspect` whenever `setup_context` is
    defined (needed for vmap); per tensor per inner step that is measurable Python overhead on
    small models. All arguments are passed positionally, so there is nothing to bind.
    """
    if torch._C._are_functorch_transforms_active():
        return _AdamWStep.apply(*args)
    return super(torch.autograd.Function, _AdamWStep).apply(*args)


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
        if self._grouped(params):  # views of one flat zero tensor each: `update` then needs no concatenation
            return {"exp_avg": flat_params.zeros_like_all(params), "exp_avg_sq": flat_params.zeros_like_all(params)}
        return {
            "exp_avg": {k: torch.zeros_like(v) for k, v in params.items()},
            "exp_avg_sq": {k: torch.zeros_like(v) for k, v in params.items()},
        }

    def _grouped(self, params: Params, *more: Params) -> bool:
        """Update all tensors as one flat tensor (`flat_params`)? Where the compiled kernels run and lr is a float."""
        if isinstance(self.lr, (Tensor, dict)) or not params or torch._C._are_functorch_transforms_active():
            return False
        if not flat_params.groupable(params, *more):
            return False
        first = next(iter(params.values()))
        return adamw_kernels.runs_on(first.dtype, first.device, sum(p.numel() for p in params.values()))

    def update(self, params: Params, grads: Params, state: dict[str, Any], step: int) -> tuple[Params, dict[str, Any]]:
        b1, b2 = self.betas
        t = step + 1
        bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
        if self._grouped(params, grads, state["exp_avg"], state["exp_avg_sq"]):
            names = list(params)
            shapes = [params[k].shape for k in names]
            flat = [flat_params.as_flat([d[k] for k in names]) for d in (params, grads, state["exp_avg"], state["exp_avg_sq"])]
            p2, m2, v2 = _apply_adamw_step(*flat, self.lr / bc1, b1, b2, self.eps, bc2**0.5, 1.0 - self.lr * self.weight_decay)
            return flat_params.split(p2, names, shapes), {"exp_avg": flat_params.split(m2, names, shapes),
                                                          "exp_avg_sq": flat_params.split(v2, names, shapes)}
        new_params, m_new, v_new = {}, {}, {}
        for k, p in params.items():
            g, lr = grads[k], _lr_for(self.lr, k)
            m, v = state["exp_avg"][k], state["exp_avg_sq"][k]
            if isinstance(lr, Tensor):  # a learnable rate: plain ops, so autograd also differentiates w.r.t. lr
                new_params[k], m_new[k], v_new[k] = _adamw_ops(p, g, m, v, lr, b1, b2, self.eps, self.weight_decay, bc1, bc2)
            else:
                new_params[k], m_new[k], v_new[k] = _apply_adamw_step(
                    p, g, m, v, lr / bc1, b1, b2, self.eps, bc2**0.5, 1.0 - lr * self.weight_decay)
        return new_params, {"exp_avg": m_new, "exp_avg_sq": v_new}

    def __repr__(self) -> str:
        return f"adamw(lr={self.lr!r}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay})"
