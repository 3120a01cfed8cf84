"""Opt-in `torch.compile` of the MLP head's per-parameter work (`LearnedOptimizer(compile=True)`).

Why: in eager mode every feature row, the (H, N) hidden layer, its GELU and the output rows are
separate passes over memory (`features.param_features_into` + `network.param_update_into`);
compiled, the features, both layers, the GELU and the output are one loop per element, with
the hidden units in registers. The arithmetic is the same formula written per hidden unit
(sums in a different order than the BLAS `addmm`), so the numbers agree with the eager step to
float32 rounding, not bit for bit (tests/test_lo_compiled.py). The first step compiles (tens of
seconds on a CPU: it needs a C++ compiler); if compiling or running the kernel fails for any
reason, the optimizer warns once and takes the eager step from then on.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from metacl.optim import features as fe


def mlp_update(p: Tensor, g: Tensor, m0: Tensor, m1: Tensor, m2: Tensor, v: Tensor, imp: Tensor,
               prev: Tensor, anchor: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, s: Tensor,
               consolidated: bool, max_log_mag: float) -> Tensor:
    """`network.param_update(param_features(...))` for one flat tensor, written elementwise.

    s = [bc2, bc_m0, bc_m1, bc_m2, rms_p, imp_min, imp_rng, prev_min, prev_rng, step scale];
    w1 (F, H), b1 (H,) (mlp1.b + the tensor's hidden bias), w2 (F + H, 2) = [skip.w; mlp2.w], b2 (2,).
    """
    denom = (v / s[0] + 1e-16).sqrt() + fe.EPS
    f = [g / denom, m0 / s[1] / denom, m1 / s[2] / denom, m2 / s[3] / denom, p / s[4], (imp - s[5]) / s[6]]
    if consolidated:
        f += [(prev - s[7]) / s[8], (p - anchor) / s[4]]
    f = [x.clamp(-10.0, 10.0) for x in f]  # absent features (before the first consolidate) are 0: no terms
    n_f, hidden = w1.shape
    o0, o1 = b2[0], b2[1]
    for k, x in enumerate(f):
        o0 = o0 + x * w2[k, 0]
        o1 = o1 + x * w2[k, 1]
    for j in range(hidden):
        h = b1[j]
        for k, x in enumerate(f):
            h = h + x * w1[k, j]
        h = F.gelu(h)
        o0 = o0 + h * w2[n_f + j, 0]
        o1 = o1 + h * w2[n_f + j, 1]
    return o0 * o1.clamp(-6.0, max_log_mag).exp() * s[9]


class CompiledStep:
    """A lazily compiled `mlp_update`; returns None (and stays off) once anything about it fails."""

    def __init__(self):
        self._fn = None
        self.failed: str | None = None

    def __call__(self, *args) -> Tensor | None:
        if self.failed is not None:
            return None
        try:
            if self._fn is None:
                self._fn = torch.compile(mlp_update, dynamic=True)
            return self._fn(*args)
        except Exception as e:  # no compiler, unsupported backend, ...: the eager step is always right
            self.failed = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            warnings.warn(f"LearnedOptimizer(compile=True): torch.compile failed ({self.failed}); "
                          "using the eager step", RuntimeWarning, stacklevel=3)
            return None
