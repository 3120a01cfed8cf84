"""`unroll`: K differentiable inner-loop updates of a model, functionally.

Why: meta-learning (token weights, learned optimizers, MAML-style initialisations) needs the
gradient of an outer loss *through* inner training steps. `unroll` runs those steps on a dict
of tensors instead of the module's parameters, so the model object is never touched and
autograd records everything:

    params_K, state_K = unroll(model, params, loss_fn, batches, optimizer=adamw(lr=1e-3))
    outer = lm_loss(model, params_K, query_batch)
    outer.backward()   # grads reach params, tensors inside loss_fn, optimizer tensors

Modes (each inner step is one of three kinds):
- second order (default): inner gradients are built with create_graph=True;
- first order (`first_order=True`): inner gradients are constants (first-order MAML). The
  outer gradient still reaches the initial params (through the identity path) and the
  optimizer's own tensors (lr, learned-optimizer weights), but not tensors inside loss_fn;
- truncated (`truncate=k`): the first K-k steps run without a graph; their total parameter
  change is added as a constant (so the initial params get a straight-through gradient and
  the optimizer state is cut), and only the last k steps are differentiated (second or first
  order, as selected).
`checkpoint=True` recomputes each differentiated step during backward (see
`checkpointing.py` for why not `torch.utils.checkpoint`), keeping only its inputs alive: same
gradients, activation memory no longer grows with K. `per_example=True` runs M independent inner loops at once with
`torch.func.vmap` over `torch.func.grad`, returning params with a leading M dim.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten
from tqdm.auto import tqdm

from metacl.engine import active_rows as _rows
from metacl.engine import flat_params
from metacl.engine.checkpointing import checkpoint_step
from metacl.engine.vmap_fixes import ElementaryLayerNorm
from metacl.engine.attention import raise_if_not_double_differentiable, second_order_attention
from metacl.engine.optimizers import FunctionalOptimizer, adamw
from metacl.errors import MetaclError

Params = dict[str, Tensor]
LossFn = Callable[[nn.Module, Params, Any], Tensor]


def _detach(tree: Any) -> Any:
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, tree)


def _grads(loss: Tensor, params: Params, create_graph: bool) -> Params:
    """d loss / d params; parameters the loss does not touch get zeros (not None)."""
    if loss.dim() != 0:
        raise MetaclError(f"loss_fn returned a tensor of shape {tuple(loss.shape)}; it must return a scalar (reduce with .mean() or .sum())")
    gs = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
    return {k: (torch.zeros_like(p) if g is None else g) for (k, p), g in zip(params.items(), gs)}


def _func_grads(loss_fn: LossFn, model: nn.Module, params: Params, batch: Any) -> Params:
    """d loss / d params by `torch.func.grad`, differentiable w.r.t. tensors the loss closes over."""

    def f(q: Params) -> Tensor:
        loss = loss_fn(model, q, batch)
        if loss.dim() != 0:
            raise MetaclError(f"loss_fn returned a tensor of shape {tuple(loss.shape)}; it must return a scalar (reduce with .mean() or .sum())")
        return loss

    return torch.func.grad(f)(params)


class _Stepper:
    """One inner step of a given kind; kept as an object so checkpointing can re-run it."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, optimizer: FunctionalOptimizer, func_grad: bool = True):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.checked = False  # the double-backward check runs once per unroll
        self.func_grad = func_grad  # off under checkpointing: torch.func.grad refuses saved-tensor hooks

    def second_order(self, params: Params, state: Any, batch: Any, step: int) -> tuple[Params, Any]:
        with torch.enable_grad(), second_order_attention(self.model):
            if self.func_grad and not any(p.requires_grad for p in params.values()):
                # Nothing upstream wants a gradient w.r.t. these params (e.g. a frozen theta_0 in
                # token weighting): `func.grad` keeps the outer graph to what the loss closes over
                # (the token weights), so the outer backward skips the Hessian w.r.t. the params.
                leaves = params
                grads = _func_grads(self.loss_fn, self.model, params, batch)
            else:
                # Tensors that carry no graph become fresh leaves so autograd.grad can target them.
                leaves = {k: (p if p.requires_grad else p.detach().requires_grad_(True)) for k, p in params.items()}
                loss = self.loss_fn(self.model, leaves, batch)
                grads = _grads(loss, leaves, create_graph=True)
            if not self.checked:
                self.checked = True
                raise_if_not_double_differentiable(self.model, params, self.loss_fn, batch, list(grads.values()))
            return self.optimizer.update(leaves, grads, state, step)

    def first_order(self, params: Params, state: Any, batch: Any, step: int) -> tuple[Params, Any]:
        leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
        with torch.enable_grad():
            grads = _grads(self.loss_fn(self.model, leaves, batch), leaves, create_graph=False)
            return self.optimizer.update(params, grads, state, step)

    def constant(self, params: Params, state: Any, batch: Any, step: int) -> tuple[Params, Any]:
        new_params, new_state = self.first_order(_detach(params), _detach(state), batch, step)
        return _detach(new_params), _detach(new_state)


def _validate(params: Any, batches: Any, optimizer: Any, truncate: int | None) -> int:
    if not isinstance(params, dict) or not params or not all(isinstance(v, Tensor) for v in params.values()):
        raise MetaclError("unroll: params must be a non-empty dict name -> Tensor, e.g. dict(model.named_parameters())")
    if not isinstance(batches, Sequence) or isinstance(batches, (str, bytes)) or len(batches) == 0:
        raise MetaclError("unroll: batches must be a non-empty list with one inner batch per inner step")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise MetaclError(f"unroll: optimizer {optimizer!r} lacks init/update; use metacl.engine.sgd(...) or adamw(...)")
    K = len(batches)
    if truncate is not None and not (isinstance(truncate, int) and 1 <= truncate <= K):
        raise MetaclError(f"unroll: truncate={truncate!r} must be an int in [1, {K}] (number of differentiated steps) or None")
    return K


def unroll(
    model: nn.Module,
    params: Params,
    loss_fn: LossFn,
    batches: Sequence[Any],
    optimizer: FunctionalOptimizer | None = None,
    first_order: bool = False,
    truncate: int | None = None,
    checkpoint: bool | int = False,
    per_example: bool | str = False,
    state: Any = None,
    start_step: int = 0,
    progress: bool = False,
    return_state: bool = True,
    active_rows: dict[str, Tensor] | None = None,
    stack: bool = True,
) -> tuple[Params, Any]:
    """Run len(batches) inner updates of `params` and return (params_K, optimizer_state_K).

    `loss_fn` must be a pure function of (model, params, batch) and closed-over tensors: with
    `checkpoint=True` it is called again during backward. Put per-step data (token weights)
    in the batch rather than in an iterator.

    `checkpoint`: False (off), True (keep every step's inputs), or an int n >= 2: keep the
    inputs (params + optimizer state) only of every n-th differentiated step and re-derive the
    others in backward by replaying the updates from the last kept one (memory flat in K when
    n >= K, at the cost of up to n-1 extra graph-free steps per recomputed step).
    `per_example`: True / "auto" (a Python loop over the examples on CPU, `vmap` elsewhere),
    "loop" or "vmap" to choose; both return the same values and gradients.
    `state`/`start_step` continue an earlier unroll (default: fresh `optimizer.init`, step 0).
    `return_state=False` returns (params_K, None): with `per_example` it saves stacking M
    copies of the optimizer state that the caller would throw away.
    `active_rows={name: rows}`: only these rows of `params[name]` are updated, the others are
    left out of the inner loop (exact under the conditions in `active_rows.py`; see
    `input_embedding_rows`); the returned params are full-size.
    `stack=False` (with `per_example`): return a list of M param dicts (and M states) instead
    of tensors with a leading M dim, saving the copy into, and in backward out of, the stack.
    See the module docstring for the meaning of each mode.
    """
    with flat_params.scope():
        return _unroll(model, params, loss_fn, batches, optimizer, first_order, truncate, checkpoint, per_example,
                       state, start_step, progress, return_state, active_rows, stack)


def _unroll(model, params, loss_fn, batches, optimizer, first_order, truncate, checkpoint, per_example, state,
            start_step, progress, return_state, active_rows, stack) -> tuple[Any, Any]:
    optimizer = adamw(lr=1e-3) if optimizer is None else optimizer
    K = _validate(params, batches, optimizer, truncate)
    if active_rows:
        return _unroll_active_rows(model, params, loss_fn, batches, optimizer, first_order, truncate, checkpoint,
                                   per_example, state, start_step, progress, return_state, active_rows, stack)
    every = _checkpoint_every(checkpoint)
    if per_example:
        impl = _per_example_impl(per_example, params)
        if every:
            raise MetaclError("unroll: checkpoint is not supported with per_example; drop one of them (vmap cannot re-run checkpointed steps)")
        if impl == "vmap":
            pK, sK = _unroll_per_example(model, params, loss_fn, batches, optimizer, first_order, truncate, state, start_step)
            if stack:
                return pK, (sK if return_state else None)
            M = _batch_size(batches)
            p_list = [{n: v[m] for n, v in pK.items()} for m in range(M)]
            return p_list, ([tree_map(lambda t, m=m: t[m] if isinstance(t, Tensor) else t, sK) for m in range(M)]
                            if return_state else None)
        return _unroll_per_example_loop(model, params, loss_fn, batches, optimizer, first_order, truncate, state, start_step,
                                        return_state, stack)
    stepper = _Stepper(model, loss_fn, optimizer, func_grad=not every)
    init = optimizer.init(params) if state is None else state
    pK, sK = _run_steps(stepper, params, init, batches, first_order, truncate, every, start_step, progress)
    return pK, (sK if return_state else None)


def _unroll_active_rows(model: nn.Module, params: Params, loss_fn: LossFn, batches: Sequence[Any],
                        optimizer: FunctionalOptimizer, first_order: bool, truncate: int | None, checkpoint: Any,
                        per_example: Any, state: Any, start_step: int, progress: bool, return_state: bool,
                        rows: dict[str, Tensor], stack: bool) -> tuple[Any, Any]:
    """`unroll` on the active rows only (see `active_rows.py`), results rebuilt at full size."""
    _rows.check(params, rows, optimizer, state)
    full = {n: params[n] for n in rows}
    pK, sK = unroll(model, _rows.select(params, rows), _rows.wrap_loss(loss_fn, full, rows), batches,
                    optimizer=optimizer, first_order=first_order, truncate=truncate, checkpoint=checkpoint,
                    per_example=per_example, state=None, start_step=start_step, progress=progress,
                    return_state=return_state, stack=stack)
    if not per_example or not stack:  # one param dict, or a list of them
        many = isinstance(pK, list)
        p_out = [_rows.rebuild(full, p, rows) for p in pK] if many else _rows.rebuild(full, pK, rows)
        if return_state:
            sK = [_rows.rebuild_state(s, full, rows) for s in sK] if many else _rows.rebuild_state(sK, full, rows)
        return p_out, (sK if return_state else None)
    M = _batch_size(batches)
    p_out = dict(pK)
    for n, r in rows.items():
        base = full[n].unsqueeze(0).expand(M, *full[n].shape)
        p_out[n] = base.index_copy(1, r.to(base.device), pK[n])
    return p_out, (_rows.rebuild_state(sK, full, rows, lead=(M,)) if return_state else None)


def _checkpoint_every(checkpoint: Any) -> int:
    if isinstance(checkpoint, bool) or checkpoint is None:
        return int(bool(checkpoint))
    if isinstance(checkpoint, int) and checkpoint >= 0:
        return checkpoint
    raise MetaclError(f"unroll: checkpoint={checkpoint!r} must be False, True or an int n >= 2 (keep inputs every n steps, replay the rest)")


def _per_example_impl(per_example: Any, params: Params) -> str:
    if per_example is True or per_example == "auto":
        # On CPU one example at a time is faster (no batching-rule overhead, cache-sized
        # tensors); on an accelerator vmap turns M small matmuls into one batched matmul.
        return "loop" if all(p.device.type == "cpu" for p in params.values()) else "vmap"
    if per_example in ("loop", "vmap"):
        return per_example
    raise MetaclError(f"unroll: per_example={per_example!r} must be False, True, 'auto', 'loop' or 'vmap'")


def _rng_state() -> tuple[Tensor, list[Tensor]]:
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _run_steps(stepper: "_Stepper", params: Params, init_state: Any, batches: Sequence[Any], first_order: bool,
               truncate: int | None, every: int, start_step: int, progress: bool = False) -> tuple[Params, Any]:
    """The inner loop of `unroll` (one example): constant, then differentiated (maybe checkpointed) steps."""
    K = len(batches)
    n_const = 0 if truncate is None else K - truncate
    p, s = dict(params), init_state
    fn = stepper.first_order if first_order else stepper.second_order
    snapshot: tuple[int, Params, Any] | None = None
    rng: dict[int, tuple[Tensor, list[Tensor]]] = {}
    for k, batch in enumerate(tqdm(batches, desc="inner steps", disable=not progress, leave=False)):
        step = start_step + k
        if k < n_const:
            p, s = stepper.constant(p, s, batch, step)
            if k == n_const - 1:  # straight-through: the skipped steps' change enters as a constant
                p = {n: params[n] + (p[n] - params[n].detach()) for n in p}
            continue
        if every == 1:
            p, s = checkpoint_step(fn, p, s, batch, step)
        elif every:
            if (k - n_const) % every == 0:
                snapshot = (k, _detach(p), _detach(s))
            rng[k] = _rng_state()
            regen = _replayer(stepper, snapshot, k, batches, start_step, rng)
            p, s = checkpoint_step(fn, p, s, batch, step, regen=regen)
        else:
            p, s = fn(p, s, batch, step)
    return p, s


def _replayer(stepper: "_Stepper", snapshot: Any, k: int, batches: Sequence[Any], start_step: int,
              rng: dict[int, tuple[Tensor, list[Tensor]]]) -> Callable[[], tuple]:
    """A function giving step k's inputs again: replay steps j..k-1 (no graph) from snapshot j."""
    j, p0, s0 = snapshot

    def regen() -> tuple:
        p, s = p0, s0
        for i in range(j, k):
            cpu, cuda = rng[i]
            with torch.random.fork_rng(devices=list(range(len(cuda)))):
                torch.set_rng_state(cpu)
                for d, st in enumerate(cuda):
                    torch.cuda.set_rng_state(st, d)
                p, s = stepper.constant(p, s, batches[i], start_step + i)
        return p, s, batches[k], start_step + k

    return regen


def _unroll_per_example_loop(model: nn.Module, params: Params, loss_fn: LossFn, batches: Sequence[Any],
                             optimizer: FunctionalOptimizer, first_order: bool, truncate: int | None,
                             state: Any, start_step: int, return_state: bool = True, stack: bool = True) -> tuple[Any, Any]:
    """M independent inner loops, one after the other, results stacked along a new dim 0 (or listed)."""
    M = _batch_size(batches)
    stepper = _Stepper(model, loss_fn, optimizer)
    init_state = optimizer.init(params) if state is None else state
    outs = []
    for m in range(M):
        bm = [tree_map(lambda t: t[m] if isinstance(t, Tensor) else t, b) for b in batches]
        outs.append(_run_steps(stepper, params, init_state, bm, first_order, truncate, 0, start_step))
    if not stack:
        return [o[0] for o in outs], ([o[1] for o in outs] if return_state else None)
    p_all = {n: torch.stack([o[0][n] for o in outs]) for n in params}
    if not return_state:
        return p_all, None
    s_leaves, spec = tree_flatten(outs[0][1])
    s_all = [torch.stack([tree_flatten(o[1])[0][i] for o in outs]) if isinstance(t, Tensor) else t
             for i, t in enumerate(s_leaves)]
    return p_all, tree_unflatten(s_all, spec)


def _batch_size(batches: Sequence[Any]) -> int:
    sizes = {t.shape[0] for b in batches for t in tree_flatten(b)[0] if isinstance(t, Tensor)}
    if len(sizes) != 1 or 0 in {t.dim() for b in batches for t in tree_flatten(b)[0] if isinstance(t, Tensor)}:
        raise MetaclError(
            f"unroll(per_example=True): every tensor in every batch needs the same leading meta-example dim M; found sizes {sorted(sizes)}"
        )
    return sizes.pop()


def _unroll_per_example(
    model: nn.Module,
    params: Params,
    loss_fn: LossFn,
    batches: Sequence[Any],
    optimizer: FunctionalOptimizer,
    first_order: bool,
    truncate: int | None,
    state: Any,
    start_step: int,
) -> tuple[Params, Any]:
    """M independent inner loops from the same params: vmap over the loop, func.grad inside.

    The outer autograd graph runs through both transforms, so an outer loss on the returned
    (M, ...) params differentiates w.r.t. `params`, per-example tensors in the batches, and
    anything the optimizer closes over, exactly as M separate `unroll` calls would.
    """
    _batch_size(batches)
    K = len(batches)
    n_const = 0 if truncate is None else K - truncate
    init_state = optimizer.init(params) if state is None else state

    def one(example_batches: list[Any]) -> tuple[Params, Any]:
        p, s = dict(params), init_state
        for k, batch in enumerate(example_batches):
            const = k < n_const
            grads = torch.func.grad(lambda q: loss_fn(model, q, batch))(_detach(p) if (const or first_order) else p)
            if const or first_order:
                grads = _detach(grads)
            if const:
                p, s = optimizer.update(_detach(p), grads, _detach(s), start_step + k)
                p, s = _detach(p), _detach(s)
                if k == n_const - 1:
                    p = {n: params[n] + (p[n] - params[n].detach()) for n in p}
            else:
                p, s = optimizer.update(p, grads, s, start_step + k)
        return p, s

    with second_order_attention(model), ElementaryLayerNorm():
        return torch.func.vmap(one, randomness="different")(list(batches))


def per_example_loss(model: nn.Module, params: Params, batch: Any, loss_fn: LossFn | None = None) -> Tensor:
    """(M,) losses of M per-example param sets (from `unroll(per_example=True)`) on M batches.

    Why a helper: HF models build their attention mask with data-dependent checks under SDPA,
    which `vmap` rejects; eager attention (switched on here, as in the inner loop) has none.
    """
    from metacl.engine.losses import lm_loss

    fn = lm_loss if loss_fn is None else loss_fn
    with second_order_attention(model), ElementaryLayerNorm():
        return torch.func.vmap(lambda p, b: fn(model, p, b), randomness="different")(params, batch)
