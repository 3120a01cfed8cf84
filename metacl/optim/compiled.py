"""Opt-in `torch.compile` of the per-parameter work of a step (`LearnedOptimizer(compile=True)`).

MLP head: `mlp_update`. Linear head: `linear_advance` + `linear_apply` (`CompiledLinear`): in eager
mode the state advance with its per-tensor sums is ~18 passes per 2^16-entry block and the
update a dozen passes per chunk; at 2 threads those small passes do not parallelise, and the
step took 3.5x AdamW's on an 8.4M Linear stack. Compiled, each is one fused, threaded loop over
the tensor (docs/benchmarks.md). Same formulas as `features.advance_and_sum_` /
`features.linear_update_`; the sums are reduced in the compiler's order, so the numbers agree
with the eager step to float32 rounding, not bit for bit (tests/test_lo_compiled.py).

Why for the MLP head: in eager mode every feature row, the (H, N) hidden layer, its GELU and the output rows are
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


def linear_advance(p: Tensor, g: Tensor, m0: Tensor, m1: Tensor, m2: Tensor, v: Tensor, imp: Tensor,
                   prev: Tensor, anchor: Tensor, consolidated: bool) -> Tensor:
    """`features.advance_and_sum_` for one flat fp32 tensor: the statistics advanced in place, and
    the sums [pp, mm, gg, mg, imp_min, imp_max, imp_sum (, prev_min, prev_max, prev_sum, dd)]."""
    m0.lerp_(g, 1 - fe.DECAYS[0])
    m1.lerp_(g, 1 - fe.DECAYS[1])
    m2.lerp_(g, 1 - fe.DECAYS[2])
    v.mul_(fe.BETA2).addcmul_(g, g, value=1 - fe.BETA2)
    imp.lerp_((g * p).abs(), 1 - fe.IMP_DECAY)
    out = [(p * p).sum(), (m1 * m1).sum(), (g * g).sum(), (m1 * g).sum(), imp.amin(), imp.amax(), imp.sum()]
    if consolidated:
        d = p - anchor
        out += [prev.amin(), prev.amax(), prev.sum(), (d * d).sum()]
    return torch.stack(out)


def linear_apply(p: Tensor, g: Tensor, m0: Tensor, m1: Tensor, m2: Tensor, v: Tensor, imp: Tensor,
                 prev: Tensor, anchor: Tensor, s: Tensor, consolidated: bool) -> None:
    """`features.linear_update_` for one flat fp32 tensor, in place, the same operations in the same order.

    s = [bc2, c0, c1/bc_m0, c2/bc_m1, c3/bc_m2, 1 - alpha*kp, alpha, imp_min, -alpha*c5/imp_rng,
    prev_min, -alpha*c6/prev_rng, alpha*c7/rms_p] (`linear_scalars`)."""
    den = (v / s[0] + 1e-16).sqrt() + fe.EPS
    num = g * s[1] + m0 * s[2] + m1 * s[3] + m2 * s[4]
    q = p * s[5] - s[6] * (num / den) + (imp - s[7]) * s[8]
    if consolidated:
        q = q + (prev - s[9]) * s[10] + anchor * s[11]
    p.copy_(q)


def linear_scalars(sc: dict, coef: list[float], alpha: float, consolidated: bool) -> list[float]:
    """The scalar row `linear_apply` reads, from `linear_update_`'s arguments (folded as it folds them)."""
    c = coef
    kp = (c[4] + (c[7] if consolidated else 0.0)) / sc["rms_p"]
    row = [sc["bc2"], c[0], c[1] / sc["bc_m0"], c[2] / sc["bc_m1"], c[3] / sc["bc_m2"], 1.0 - alpha * kp, alpha,
           sc["imp_min"], -alpha * c[5] / sc["imp_rng"]]
    if consolidated:
        row += [sc["prev_min"], -alpha * c[6] / sc["prev_rng"], alpha * c[7] / sc["rms_p"]]
    else:
        row += [0.0, 0.0, 0.0]
    return row


class _Lazy:
    """Functions compiled on first use; once anything about one fails, every call returns None
    (the caller then takes the eager step, which is always right) after one warning."""

    def __init__(self, *fns):
        self._src = fns
        self._fns = None
        self.failed: str | None = None

    def _call(self, i: int, *args):
        if self.failed is not None:
            return None
        try:
            if self._fns is None:
                self._fns = [torch.compile(f, dynamic=True) for f in self._src]
            out = self._fns[i](*args)
            return True if out is None else out
        except Exception as e:  # no compiler, unsupported backend, ...
            self.failed = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            warnings.warn(f"LearnedOptimizer(compile=True): torch.compile failed ({self.failed}); "
                          "using the eager step", RuntimeWarning, stacklevel=4)
            return None


class CompiledStep(_Lazy):
    """A lazily compiled `mlp_update`; returns None (and stays off) once anything about it fails."""

    def __init__(self):
        super().__init__(mlp_update)

    def __call__(self, *args) -> Tensor | None:
        return self._call(0, *args)


class CompiledLinear(_Lazy):
    """Lazily compiled `linear_advance` and `linear_apply`, spoken in the optimizer's terms: its state
    dict in, the sums dict of `features.advance_and_sum_` out; the scalars of `features.linear_update_`
    in, packed here by `linear_scalars`. Both layouts live beside the kernels that read them. Every
    tensor handed in must be contiguous (the caller checks once per step)."""

    def __init__(self):
        super().__init__(linear_advance, linear_apply)

    def advance(self, pf: Tensor, g: Tensor, st: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """Advance `st` in place; the per-tensor sums keyed as `advance_and_sum_` keys them, or None
        when not compiled (nothing advanced: the caller takes the eager path)."""
        cons = "imp_prev" in st
        pfl = pf.view(-1)
        extra = (st["imp_prev"].view(-1), st["anchor"].view(-1)) if cons else (pfl, pfl)
        out = self._call(0, pfl, g.view(-1), *(st[k].view(-1) for k in ("m0", "m1", "m2", "v", "imp")), *extra, cons)
        if out is None:
            return None
        n = pf.numel()
        sums = {"pp": out[0], "mm": out[1], "gg": out[2], "mg": out[3], "imp_min": out[4], "imp_max": out[5],
                "imp_mean": out[6] / n}
        if cons:
            sums.update(prev_min=out[7], prev_max=out[8], prev_mean=out[9] / n, dd=out[10])
        return sums

    def apply(self, target: Tensor, g: Tensor, views: dict[str, Tensor], sc: dict, coef: list[float],
              alpha: float) -> bool:
        """`target -= alpha * update` in place (flat fp32); False when not compiled (nothing applied)."""
        cons = "imp_prev" in views
        s = torch.tensor(linear_scalars(sc, coef, alpha, cons), dtype=torch.float32, device=target.device)
        extra = (views["imp_prev"], views["anchor"]) if cons else (target, target)
        return bool(self._call(1, target, g, *(views[k] for k in ("m0", "m1", "m2", "v", "imp")), *extra, s, cons))
