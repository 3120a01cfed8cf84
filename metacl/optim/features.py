"""What the learned optimizer sees: per-parameter features and one summary token per tensor.

Why these features (VeLO/PyLO-style, plus continual-learning ones from Vettoruzzo et al.):
- the gradient and momenta at several decays, all divided by the RMS of the second moment, so
  the network starts from Adam-like, scale-free inputs and can learn to mix timescales;
- the parameter value (relative to the tensor's RMS), so it can learn weight-decay-like terms;
- a gradient-based importance |g * p| (a first-order estimate of how much the loss would change
  if the weight moved to zero), min-max normalised per tensor, for the *current* task and a
  consolidated copy from *earlier* tasks (set by `consolidate`), plus the drift of the weight
  since the last task ended: together they let the optimizer learn to protect what old tasks need;
- the fraction of training done, which only enters through the per-tensor token.

The functions down to the "Eager fast path" section are pure and differentiable: the functional
optimizer (meta-training) uses them as they are. The `torch.optim.Optimizer` (deployment) uses
their no-grad twins below, which compute the same numbers chunk by chunk into reused buffers so
time and memory stay bounded on large models.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DECAYS = (0.5, 0.9, 0.99)   # momentum timescales
BETA2 = 0.999               # second-moment decay
IMP_DECAY = 0.99            # importance EMA decay
EPS = 1e-8
N_PARAM_FEATURES = 8
N_TOKEN_FEATURES = 9
MOMENTS = tuple(f"m{i}" for i in range(len(DECAYS)))


def init_tensor_state(p: Tensor) -> dict[str, Tensor]:
    """Fresh per-tensor statistics (all zeros, same shape as the parameter)."""
    st = {k: torch.zeros_like(p) for k in MOMENTS}
    st["v"] = torch.zeros_like(p)
    st["imp"] = torch.zeros_like(p)
    return st


def advance_state(p: Tensor, g: Tensor, st: dict[str, Tensor]) -> dict[str, Tensor]:
    """One EMA step of momenta, second moment and importance; out-of-place (keeps autograd)."""
    new = dict(st)
    for k, d in zip(MOMENTS, DECAYS):
        new[k] = d * st[k] + (1 - d) * g
    new["v"] = BETA2 * st["v"] + (1 - BETA2) * g * g
    new["imp"] = IMP_DECAY * st["imp"] + (1 - IMP_DECAY) * (g * p).abs()
    return new


def _rms(x: Tensor) -> Tensor:
    # the tiny constant keeps d sqrt / dx finite at 0 (an all-zero drift or gradient), else NaN meta-grads
    return (x.pow(2).mean() + 1e-16).sqrt()


def tensor_scalars(p: Tensor, g: Tensor, st: dict[str, Tensor], t: float) -> dict[str, Tensor | float]:
    """Whole-tensor reductions that per-parameter features need (computed once, before chunking)."""
    sc: dict[str, Tensor | float] = {
        "rms_p": _rms(p) + 1e-6,
        "imp_min": st["imp"].min(),
        "imp_max": st["imp"].max(),
        "bc2": 1 - BETA2**t,
    }
    for k, d in zip(MOMENTS, DECAYS):
        sc["bc_" + k] = 1 - d**t
    if "imp_prev" in st:
        sc["prev_min"] = st["imp_prev"].min()
        sc["prev_max"] = st["imp_prev"].max()
    return sc


def _minmax(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    return (x - lo) / (hi - lo + 1e-12)


def param_features(p: Tensor, g: Tensor, st: dict[str, Tensor], sc: dict) -> Tensor:
    """(N, N_PARAM_FEATURES) features for the (flattened) entries given; slices work too."""
    p, g = p.reshape(-1), g.reshape(-1)
    denom = (st["v"].reshape(-1) / sc["bc2"] + 1e-16).sqrt() + EPS
    cols = [g / denom]
    for k in MOMENTS:
        cols.append(st[k].reshape(-1) / sc["bc_" + k] / denom)
    cols.append(p / sc["rms_p"])
    cols.append(_minmax(st["imp"].reshape(-1), sc["imp_min"], sc["imp_max"]))
    if "imp_prev" in st:
        cols.append(_minmax(st["imp_prev"].reshape(-1), sc["prev_min"], sc["prev_max"]))
        cols.append((p - st["anchor"].reshape(-1)) / sc["rms_p"])
    else:
        zero = torch.zeros_like(p)
        cols += [zero, zero]
    return torch.stack(cols, dim=1).clamp(-10.0, 10.0)


def tensor_token(p: Tensor, g: Tensor, st: dict[str, Tensor], sc: dict, frac: float) -> Tensor:
    """One summary vector per tensor: what the transformer attends over.

    Scales (log RMS of gradient and weight, size), training progress, whether the tensor is a
    bias/norm vector, how much old tasks rely on it, how far it has drifted since, and how well
    the current gradient agrees with its momentum.
    """
    m = st["m1"] / sc["bc_m1"]
    align = (m * g).mean() / (_rms(m) * _rms(g) + 1e-12)
    if "imp_prev" in st:
        prev = _minmax(st["imp_prev"], sc["prev_min"], sc["prev_max"]).mean()
        drift = (_rms(p - st["anchor"]) / sc["rms_p"]).clamp(max=10.0)
    else:
        prev = drift = torch.zeros((), dtype=p.dtype, device=p.device)
    feats = [
        0.1 * torch.log(_rms(g) + 1e-12),
        0.1 * torch.log(sc["rms_p"]),
        torch.tensor(0.1 * math.log(p.numel()), dtype=p.dtype, device=p.device),
        torch.tensor(float(frac), dtype=p.dtype, device=p.device),
        torch.tensor(1.0 if p.dim() <= 1 else 0.0, dtype=p.dtype, device=p.device),
        prev,
        drift,
        align,
        _minmax(st["imp"], sc["imp_min"], sc["imp_max"]).mean(),
    ]
    return torch.stack([f.reshape(()) for f in feats])


def consolidate_tensor(p: Tensor, st: dict[str, Tensor]) -> dict[str, Tensor]:
    """End of a task: fold the current importance into the old-task importance, anchor the weight.

    Max-accumulation (as in SPG) keeps a weight protected if *any* earlier task needed it.
    Detached on purpose: old-task statistics are inputs to the optimizer, not things to differentiate.
    """
    new = dict(st)
    imp = _minmax(st["imp"], st["imp"].min(), st["imp"].max()).detach()
    new["imp_prev"] = torch.maximum(st["imp_prev"], imp) if "imp_prev" in st else imp
    new["anchor"] = p.detach().clone()
    new["imp"] = torch.zeros_like(st["imp"])
    return new


# ---------------------------------------------------------------------------------------------
# Eager fast path (used by `LearnedOptimizer.step`, never differentiated).
#
# Same numbers as `tensor_scalars` / `tensor_token` / `param_features` above, computed the way
# a no-grad step on a big model wants them: whole-tensor reductions as dot products (one read of
# each tensor, no squared temporaries), and features written row by row into a caller-owned
# (F, N) buffer (each row is a contiguous write; no per-chunk torch.stack, no zero columns
# allocated). `tests/test_learned_optimizer_speed.py` checks them against the functions above.


def _flat_rms(sumsq: Tensor, n: int) -> Tensor:
    return (sumsq / n + 1e-16).sqrt()


@torch.no_grad()
def scalars_and_token(p: Tensor, g: Tensor, st: dict[str, Tensor], t: float, frac: float) -> tuple[dict, Tensor]:
    """`tensor_scalars` and `tensor_token` in one go, from flat reductions (no autograd)."""
    pf, gf, m1 = p.reshape(-1), g.reshape(-1), st["m1"].reshape(-1)
    n = pf.numel()
    imp = st["imp"].reshape(-1)
    sc: dict[str, Tensor | float] = {"rms_p": _flat_rms(torch.dot(pf, pf), n) + 1e-6, "bc2": 1 - BETA2**t}
    sc["imp_min"], sc["imp_max"] = torch.aminmax(imp)
    for k, d in zip(MOMENTS, DECAYS):
        sc["bc_" + k] = 1 - d**t
    bc = sc["bc_m1"]
    # m = m1 / bc:  mean(m * g) = (m1 . g) / (bc n),  mean(m^2) = (m1 . m1) / (bc^2 n)
    rms_m = (torch.dot(m1, m1) / (bc * bc) / n + 1e-16).sqrt()
    rms_g = _flat_rms(torch.dot(gf, gf), n)
    align = (torch.dot(m1, gf) / bc / n) / (rms_m * rms_g + 1e-12)
    zero = torch.zeros((), dtype=pf.dtype, device=pf.device)
    prev = drift = zero
    if "imp_prev" in st:
        ip = st["imp_prev"].reshape(-1)
        sc["prev_min"], sc["prev_max"] = torch.aminmax(ip)
        prev = (ip.mean() - sc["prev_min"]) / (sc["prev_max"] - sc["prev_min"] + 1e-12)
        dlt = pf - st["anchor"].reshape(-1)
        drift = (_flat_rms(torch.dot(dlt, dlt), n) / sc["rms_p"]).clamp(max=10.0)
        del dlt
    sc["imp_rng"] = sc["imp_max"] - sc["imp_min"] + 1e-12      # per-tensor, so chunks do not recompute it
    if "imp_prev" in st:
        sc["prev_rng"] = sc["prev_max"] - sc["prev_min"] + 1e-12
    imp_mean = (imp.mean() - sc["imp_min"]) / sc["imp_rng"]
    consts = torch.tensor([0.1 * math.log(n), float(frac), 1.0 if p.dim() <= 1 else 0.0], dtype=pf.dtype, device=pf.device)
    token = torch.stack([
        0.1 * torch.log(rms_g + 1e-12), 0.1 * torch.log(sc["rms_p"]), consts[0], consts[1], consts[2],
        prev, drift, align, imp_mean,
    ])
    return sc, token


@torch.no_grad()
def param_features_into(out: Tensor, scratch: Tensor, p: Tensor, g: Tensor, st: dict[str, Tensor], sc: dict) -> Tensor:
    """Write `param_features(p, g, st, sc).T` into `out` (F, N); `scratch` is an (N,) work row.

    Operation for operation the same arithmetic as `param_features`, so the values match exactly.
    """
    assert out.shape[0] == N_PARAM_FEATURES, "the row layout below is the 8 features of param_features"
    denom = torch.div(st["v"], sc["bc2"], out=scratch).add_(1e-16).sqrt_().add_(EPS)
    torch.div(g, denom, out=out[0])
    for j, k in enumerate(MOMENTS):
        torch.div(st[k], sc["bc_" + k], out=out[1 + j]).div_(denom)
    torch.div(p, sc["rms_p"], out=out[4])
    rng = sc["imp_rng"] if "imp_rng" in sc else sc["imp_max"] - sc["imp_min"] + 1e-12
    torch.sub(st["imp"], sc["imp_min"], out=out[5]).div_(rng)
    if "imp_prev" in st:
        rng = sc["prev_rng"] if "prev_rng" in sc else sc["prev_max"] - sc["prev_min"] + 1e-12
        torch.sub(st["imp_prev"], sc["prev_min"], out=out[6]).div_(rng)
        torch.sub(p, st["anchor"], out=out[7]).div_(sc["rms_p"])
    else:
        out[6:8].zero_()
    return out.clamp_(-10.0, 10.0)
