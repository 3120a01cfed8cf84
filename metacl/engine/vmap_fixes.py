"""Work-arounds for wrong second-order gradients under `torch.func.vmap` (torch 2.13).

Why: `vmap` over `torch.func.grad` through `F.layer_norm` with a *differentiated* weight
gives a wrong outer gradient for the parameters upstream of the norm (found by the
per_example-vs-`higher` parity test, whose model has LayerNorms; without vmap it is exact).
`per_example=True` would silently return wrong meta-gradients for every model with an
`nn.LayerNorm`. While the per-example loop runs, `F.layer_norm` is replaced by the same
formula written with elementary ops, whose batching rules are correct. Values agree with the
fused kernel to rounding (~1e-16 relative in float64).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


def layer_norm_elementary(
    x: Tensor, normalized_shape: Any, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """`F.layer_norm` as mean / variance / rsqrt (biased variance, like the kernel)."""
    n = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    dims = tuple(range(-n, 0))
    mu = x.mean(dims, keepdim=True)
    xc = x - mu
    out = xc * torch.rsqrt(xc.pow(2).mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


class ElementaryLayerNorm(TorchFunctionMode):
    """Route `F.layer_norm` to `layer_norm_elementary`; everything else passes through."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.layer_norm:
            return layer_norm_elementary(*args, **kwargs)
        return func(*args, **kwargs)
