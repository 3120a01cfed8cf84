"""One flat tensor for all of an inner step's parameters, so that AdamW is one call per step, not one per tensor.

Why: a differentiable AdamW step per parameter tensor costs a Python autograd Function, a
compiled-kernel call and its backward, ~0.5 ms of overhead each; an LM has dozens of tensors
and a meta-step runs K steps for each of M examples, so this overhead was ~10% of a meta-step
at the `small` bench size and more at `cpu-small`, where most tensors are small. `adamw.update`
therefore concatenates the tensors once, updates the flat vector with one `_AdamWStep`, and
hands back per-tensor views of the result (`torch.split`, whose backward is one `cat`).

The views remember the flat tensor they came from (`_FLAT` attribute: the flat tensor, the
view's index, the number of views, the `scope` that made them). When the next step of the
same `unroll` gets exactly those views back (same objects, same order) it uses the flat tensor
directly instead of concatenating again; the gradient that reaches the views through the model
(split backward) and the one the next update sends to the flat tensor are summed by autograd
as usual. Only inside one `scope` (one `unroll` call): there the intermediate views never
reach the caller, who therefore cannot ask for a gradient w.r.t. a view, which would miss the
part that went to the flat tensor directly. Views from anywhere else are concatenated. The
values are the same as per-tensor updates (AdamW is elementwise); only the grouping changes.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import torch
from torch import Tensor

_FLAT = "_metacl_flat"
_SCOPE: contextvars.ContextVar[object | None] = contextvars.ContextVar("metacl_flat_scope", default=None)


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Views tagged inside may be recognised by `as_flat` inside the same scope only (see the module docstring)."""
    token = _SCOPE.set(object())
    try:
        yield
    finally:
        _SCOPE.reset(token)


def as_flat(tensors: Sequence[Tensor]) -> Tensor:
    """The flat concatenation of `tensors`: the flat tensor they are views of, or a new `cat`."""
    n, here = len(tensors), _SCOPE.get()
    tag = getattr(tensors[0], _FLAT, None)
    if here is not None and tag is not None and tag[2] == n and tag[3] is here:
        flat = tag[0]
        if all(getattr(t, _FLAT, None) is not None and getattr(t, _FLAT)[0] is flat and getattr(t, _FLAT)[1] == i
               for i, t in enumerate(tensors)):
            return flat
    return torch.cat([t.reshape(-1) for t in tensors])


def split(flat: Tensor, names: Sequence[str], shapes: Sequence[torch.Size]) -> dict[str, Tensor]:
    """Per-tensor views of `flat` (in `names` order), tagged so `as_flat` can find `flat` again."""
    parts = torch.split(flat, [int(torch.Size(s).numel()) for s in shapes])
    here, out = _SCOPE.get(), {}
    for i, (name, part, shape) in enumerate(zip(names, parts, shapes)):
        view = part.view(shape)
        if here is not None:
            setattr(view, _FLAT, (flat, i, len(names), here))
        out[name] = view
    return out


def zeros_like_all(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Zero tensors shaped like `params`, as tagged views of one flat zero tensor."""
    first = next(iter(params.values()))
    flat = torch.zeros(sum(p.numel() for p in params.values()), dtype=first.dtype, device=first.device)
    return split(flat, list(params), [p.shape for p in params.values()])


def groupable(*dicts: dict[str, Tensor]) -> bool:
    """One dtype and device for every tensor, on CPU, and the same names in every dict."""
    first = next(iter(dicts[0].values()))
    keys = dicts[0].keys()
    return (first.device.type == "cpu" and first.dtype in (torch.float32, torch.float64)
            and all(d.keys() == keys for d in dicts)
            and all(t.dtype == first.dtype and t.device == first.device for d in dicts for t in d.values()))
