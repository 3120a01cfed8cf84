"""Second-order attention and a check for ops that cannot be differentiated twice.

Why: a meta-gradient through an inner update differentiates the model's backward pass.
Fused attention kernels (SDPA's flash/efficient paths, FlashAttention) have no double
backward: PyTorch either raises only at the outer `backward()` ("derivative for ... is not
implemented") or, for `@once_differentiable` functions, errors late as well. Eager attention
(plain matmul + softmax) is twice differentiable, so second-order steps switch to it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from metacl.errors import MetaclError

# Autograd node names that stand for "this backward has no derivative".
_BAD_NODES = ("NotImplemented", "DelayedError", "Error")


def _attn_configs(model: nn.Module) -> list[Any]:
    """Every distinct HF config (including sub-configs) reachable from the model's modules."""
    seen: dict[int, Any] = {}
    stack = [getattr(m, "config", None) for m in model.modules()]
    while stack:
        cfg = stack.pop()
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "_attn_implementation"):
            continue
        seen[id(cfg)] = cfg
        for key in getattr(cfg, "sub_configs", {}) or {}:
            stack.append(getattr(cfg, key, None))
    return list(seen.values())


def _set_impl(cfg: Any, impl: Any) -> None:
    # transformers 5 stores the choice in `_attn_implementation_internal` behind a property;
    # writing the internal field avoids re-running availability checks on every inner step.
    if hasattr(cfg, "_attn_implementation_internal"):
        cfg._attn_implementation_internal = impl
    else:  # older transformers: a plain attribute
        cfg._attn_implementation = impl


@contextlib.contextmanager
def second_order_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Switch every HF attention config in `model` to "eager"; restore the old choice on exit.

    Works on plain HF models and PEFT wrappers (it walks all modules' configs). Models with no
    HF config are left alone. Cheap enough to enter on every inner step, which is what
    `unroll` does so that checkpoint recomputation (run during backward) also uses eager attention.
    """
    configs = _attn_configs(model)
    saved = [(cfg, getattr(cfg, "_attn_implementation_internal", cfg._attn_implementation)) for cfg in configs]
    try:
        for cfg, _ in saved:
            _set_impl(cfg, "eager")
        yield model
    finally:
        for cfg, old in saved:
            _set_impl(cfg, old)


def has_non_differentiable_backward(grads: list[Tensor], stop: set | None = None, max_nodes: int = 200_000) -> bool:
    """True if the graph behind `grads` (made with create_graph=True) holds a node with no derivative.

    `stop`: autograd nodes not to walk past (a module's inputs), keeping the walk local.
    """
    stop = stop or set()
    seen: set[Any] = set()
    stack = [g.grad_fn for g in grads if g is not None and g.grad_fn is not None]
    while stack and len(seen) < max_nodes:
        node = stack.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        name = node.name()
        if any(bad in name for bad in _BAD_NODES) and "Accumulate" not in name:
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


def find_non_double_differentiable(
    model: nn.Module, params: dict[str, Tensor], loss_fn: Callable[..., Tensor], batch: Any
) -> str | None:
    """Name the innermost module whose own computation has no double backward, or None.

    Runs `loss_fn` once; after each module's forward, differentiates |out|^2 w.r.t. that
    module's inputs and parameters with create_graph=True (autograd only walks the module's
    own computation to reach them) and searches that graph for no-derivative nodes. Children
    finish before parents, so the first hit is the innermost culprit. Only called on the
    error path, so the extra local backward per module is affordable.
    """
    found: list[str] = []

    def make_post(name: str) -> Callable:
        def post(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if found:
                return
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor) and t.requires_grad and t.is_floating_point()]
            ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor) and t.requires_grad]
            ins += [p for p in mod.parameters() if p.requires_grad]
            if not outs or not ins:
                return
            with torch.enable_grad():
                total = sum(o.float().pow(2).sum() for o in outs)
                gs = torch.autograd.grad(total, ins, create_graph=True, allow_unused=True)
            stop = {t.grad_fn for t in ins if t.grad_fn is not None}
            if has_non_differentiable_backward([g for g in gs if g is not None], stop):
                found.append(f"{name or '<root>'} ({type(mod).__name__})")

        return post

    handles = [mod.register_forward_hook(make_post(name), with_kwargs=True) for name, mod in model.named_modules()]
    try:
        probe = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            loss_fn(model, probe, batch)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def raise_if_not_double_differentiable(
    model: nn.Module, params: dict[str, Tensor], loss_fn: Callable[..., Tensor], batch: Any, grads: list[Tensor]
) -> None:
    """Raise a one-line MetaclError naming the module if `grads` cannot be differentiated again."""
    if not has_non_differentiable_backward(grads):
        return
    where = find_non_double_differentiable(model, params, loss_fn, batch) or "an operation inside loss_fn (no module found)"
    raise MetaclError(
        f"module {where} cannot be differentiated twice, so a second-order meta-gradient is impossible; "
        "use eager attention / a twice-differentiable op there, or pass first_order=True to unroll"
    )
