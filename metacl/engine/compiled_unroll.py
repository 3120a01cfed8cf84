"""K inner updates per example and an outer loss on their result, as ONE compiled function.

Why: on CPU a second-order token-weighting meta-step spends most of its time outside the
matmuls (docs/results/meta_throughput_issue18/): thousands of small ops per example, each with
Python and autograd overhead, and a full pass over memory for every elementwise op of the
inner optimizer. `torch.compile` fuses such work, but AOTAutograd cannot compile a recorded
(`create_graph=True`) backward, which is how `unroll` differentiates through inner steps.
The way around it: compute each inner gradient with `torch.func.grad` *inside* the compiled
function. To the compiler the inner backward is then ordinary forward ops of one graph, and
the meta-gradient is that graph's ordinary, compiled backward: one first-order
differentiation of a function that contains K gradient computations, the same mathematics as
`unroll`'s second-order mode (tests/test_compiled_unroll.py: float64, against `unroll`).

    step = compiled_unroll_loss(model, inner_loss, outer_loss, adamw(lr=1e-3), steps=2)
    losses = step(params, inner, outer)   # (M, n) outer losses, one row per example
    losses[:, 0].mean().backward()        # reaches what the batches carry (token weights), a tensor lr

`inner` and `outer` are dicts of tensors with a leading example dim M (every example gets its
own K inner steps from `params`, like `unroll(per_example=True)`); `outer_loss(model, p_K,
outer_m)` returns a scalar or a 1-D tensor of losses. Restrictions (anything else: `unroll`):
the optimizer is metacl's `adamw` or `sgd` (its rate may be a tensor, passed as an input); every
inner step is differentiated (no truncation or checkpointing); shapes are static, so the first
call at a new shape compiles (about a minute at 0.9M parameters, several at 7M, cached on disk
by torch afterwards): pad batches to a fixed length. Eager attention is switched on inside,
since the traced inner backward of fused attention has no derivative.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from metacl.engine import active_rows as _rows
from metacl.engine.attention import second_order_attention
from metacl.engine.optimizers import _adamw_ops, adamw, sgd
from metacl.errors import MetaclError

Params = dict[str, Tensor]
Batch = dict[str, Tensor]
BACKEND = "inductor"  # torch.compile backend; tests of the surrounding code may use "aot_eager" (same graph, no codegen)


def _updater(optimizer: Any) -> tuple[Callable, Any]:
    """(update(p, g, state, step, lr) -> (p', state'), lr) in plain differentiable ops for `optimizer`."""
    if not isinstance(optimizer, (adamw, sgd)):
        raise MetaclError(f"compiled_unroll_loss: optimizer {optimizer!r} is not supported; use metacl.engine.adamw or sgd, or unroll")
    if isinstance(optimizer.lr, dict):
        raise MetaclError("compiled_unroll_loss: per-parameter learning-rate dicts are not supported; pass one rate or use unroll")
    if isinstance(optimizer, adamw):
        b1, b2 = optimizer.betas
        eps, wd = optimizer.eps, optimizer.weight_decay

        def update_adamw(p: Params, g: Params, s: dict, step: int, lr: Any) -> tuple[Params, dict]:
            t = step + 1
            bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
            new_p, new_m, new_v = {}, {}, {}
            for k in p:
                new_p[k], new_m[k], new_v[k] = _adamw_ops(p[k], g[k], s["m"][k], s["v"][k], lr, b1, b2, eps, wd, bc1, bc2)
            return new_p, {"m": new_m, "v": new_v}

        return update_adamw, optimizer.lr
    mom, wd = optimizer.momentum, optimizer.weight_decay

    def update_sgd(p: Params, g: Params, s: dict, step: int, lr: Any) -> tuple[Params, dict]:
        new_p, new_b = {}, {}
        for k in p:
            d = g[k] + wd * p[k] if wd else g[k]
            if mom:  # buffers start at 0, so the first step uses the plain gradient, as in torch and `sgd`
                d = mom * s["m"][k] + d
                new_b[k] = d
            new_p[k] = p[k] - lr * d
        return new_p, {"m": new_b}

    return update_sgd, optimizer.lr


def compiled_unroll_loss(model: nn.Module, inner_loss: Callable[[nn.Module, Params, Batch], Tensor],
                         outer_loss: Callable[[nn.Module, Params, Batch], Tensor], optimizer: Any, steps: int,
                         first_order: bool = False, dynamic: bool = False) -> Callable[..., Tensor]:
    """A function (params, inner, outer, lr=None, active_rows=None) -> (M, n) outer losses after `steps` updates.

    See the module docstring. One compiled function serves every example (called M times, so
    compiling costs one example's graph, not M); it compiles on its first call at each shape,
    so keep the returned function and call it again. `lr` replaces the optimizer's rate for
    this call (a tensor that requires grad gets its meta-gradient). `active_rows={name: rows}`
    updates only those rows of `params[name]`, exactly as `unroll(active_rows=...)` (same
    conditions: `active_rows.py`); pass a fixed number of rows (`active_rows.fixed_size`) so
    the shapes stay static. `first_order=True` treats the inner gradients as constants, as
    `unroll(first_order=True)`: the outer gradient then reaches `params` (the identity path)
    and the rate, not what only the inner loss sees. `params` may require grad (MAML-style
    meta-gradients w.r.t. the initial parameters).
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise MetaclError(f"compiled_unroll_loss: steps={steps!r} must be an int >= 1")
    update, lr0 = _updater(optimizer)
    has_v = isinstance(optimizer, adamw)

    def one(sub: Params, full: Params, rows: dict[str, Tensor], inner_m: Batch, outer_m: Batch, lr: Any) -> Tensor:
        def whole(q: Params) -> Params:  # the loss sees full-size tensors: fixed rows + updated rows
            return _rows.rebuild(full, q, rows) if rows else q

        p = dict(sub)
        zeros = {k: torch.zeros_like(v) for k, v in p.items()}
        state: dict = {"m": zeros, "v": zeros} if has_v else {"m": zeros}
        for k in range(steps):
            g = torch.func.grad(lambda q: inner_loss(model, whole(q), inner_m))(p)
            if first_order:
                g = {n: t.detach() for n, t in g.items()}
            p, state = update(p, g, state, k, lr)
        return outer_loss(model, whole(p), outer_m).reshape(-1)

    compiled = torch.compile(one, dynamic=dynamic, backend=BACKEND)

    def call(params: Params, inner: Batch, outer: Batch, lr: Any = None,
             active_rows: dict[str, Tensor] | None = None) -> Tensor:
        sizes = {v.shape[0] for v in (*inner.values(), *outer.values())}
        if len(sizes) != 1:
            raise MetaclError(f"compiled_unroll_loss: every inner and outer tensor needs the same leading example dim M; found {sorted(sizes)}")
        rows = dict(active_rows or {})
        if rows:
            _rows.check(params, rows, optimizer, None)
        sub = _rows.select(params, rows)
        full = {n: params[n] for n in rows}
        rate = lr0 if lr is None else lr
        with second_order_attention(model):
            return torch.stack([compiled(sub, full, rows, {k: v[m] for k, v in inner.items()},
                                         {k: v[m] for k, v in outer.items()}, rate) for m in range(sizes.pop())])

    return call
