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


def start_state(p: Tensor, anchored: bool = False) -> dict[str, Tensor]:
    """The state a tensor starts with: fresh, or (`NetConfig.anchor_start`) consolidated at its
    starting value, so the drift features measure the distance from the weights training began at."""
    st = init_tensor_state(p)
    return consolidate_tensor(p, st) if anchored else st


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


def param_features(p: Tensor, g: Tensor, st: dict[str, Tensor], sc: dict, clamp: bool = True) -> Tensor:
    """(N, N_PARAM_FEATURES) features for the (flattened) entries given; slices work too.

    `clamp=False` (the linear head): no clip to [-10, 10], so the update stays linear in the state
    and its eager twin can fold all features into a few fused passes (`linear_update_`).
    """
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
    out = torch.stack(cols, dim=1)
    return out.clamp(-10.0, 10.0) if clamp else out


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


def consolidate_tensor(p: Tensor, st: dict[str, Tensor], decay: float = 1.0) -> dict[str, Tensor]:
    """End of a task: fold the current importance into the old-task importance, anchor the weight.

    Max-accumulation (as in SPG) keeps a weight protected if *any* earlier task needed it.
    `decay` < 1 shrinks the old importance before the max (decay 0: only the last task counts), a
    plasticity knob for long sequences where max-accumulation protects everything; every shipped
    weight was trained with 1. Detached on purpose: old-task statistics are inputs to the optimizer,
    not things to differentiate.
    """
    new = dict(st)
    imp = _minmax(st["imp"], st["imp"].min(), st["imp"].max()).detach()
    new["imp_prev"] = torch.maximum(decay * st["imp_prev"], imp) if "imp_prev" in st else imp
    new["anchor"] = p.detach().clone()
    new["imp"] = torch.zeros_like(st["imp"])
    return new


def prime_tensor(p: Tensor, st: dict[str, Tensor], importance: Tensor) -> dict[str, Tensor]:
    """Before the first step: make `importance` (measured on old data) the old-task importance, anchored at p.

    The same fold as `consolidate_tensor` at the end of a task, with the statistic supplied instead of
    accumulated: what the state would hold after a task spent on the old data. Why: a CKL run's old
    "task" is pre-training, which the optimizer never saw, so without this its old importance is 0.
    """
    return consolidate_tensor(p, {**st, "imp": importance.to(p.dtype)})


def pull_ratio(imp_prev: Tensor) -> Tensor:
    """Per-parameter share of the importance-weighted pull, in [0, 1): imp / (imp + mean(imp)).

    Scale-free and bounded (0.5 at the tensor's mean importance, -> 1 for the few that matter most),
    so the pull `rho * ratio * (p - anchor)` is a contraction for any rate rho <= 1.
    """
    return imp_prev / (imp_prev + imp_prev.mean() + 1e-12)


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
def tensor_sums(p: Tensor, g: Tensor, st: dict[str, Tensor]) -> dict[str, Tensor]:
    """The whole-tensor reductions `scalars_and_token` needs, one read of each tensor (no autograd)."""
    pf, gf, m1 = p.reshape(-1), g.reshape(-1), st["m1"].reshape(-1)
    imp = st["imp"].reshape(-1)
    out = {"pp": torch.dot(pf, pf), "mm": torch.dot(m1, m1), "gg": torch.dot(gf, gf), "mg": torch.dot(m1, gf)}
    out["imp_min"], out["imp_max"] = torch.aminmax(imp)
    out["imp_mean"] = imp.mean()
    if "imp_prev" in st:
        ip = st["imp_prev"].reshape(-1)
        out["prev_min"], out["prev_max"] = torch.aminmax(ip)
        out["prev_mean"] = ip.mean()
        dlt = pf - st["anchor"].reshape(-1)
        out["dd"] = torch.dot(dlt, dlt)
    return out


@torch.no_grad()
def scalars_and_token(p: Tensor, g: Tensor, st: dict[str, Tensor], t: float, frac: float,
                      sums: dict[str, Tensor] | None = None) -> tuple[dict, Tensor]:
    """`tensor_scalars` and `tensor_token` in one go, from flat reductions (no autograd).

    `sums`: the reductions of `tensor_sums`, if the caller already has them (the linear head
    accumulates them chunk by chunk while it advances the state, `advance_and_sum_`).
    """
    n = p.numel()
    sums = tensor_sums(p, g, st) if sums is None else sums
    sc: dict[str, Tensor | float] = {"rms_p": _flat_rms(sums["pp"], n) + 1e-6, "bc2": 1 - BETA2**t}
    sc["imp_min"], sc["imp_max"] = sums["imp_min"], sums["imp_max"]
    for k, d in zip(MOMENTS, DECAYS):
        sc["bc_" + k] = 1 - d**t
    bc = sc["bc_m1"]
    # m = m1 / bc:  mean(m * g) = (m1 . g) / (bc n),  mean(m^2) = (m1 . m1) / (bc^2 n)
    rms_m = (sums["mm"] / (bc * bc) / n + 1e-16).sqrt()
    rms_g = _flat_rms(sums["gg"], n)
    align = (sums["mg"] / bc / n) / (rms_m * rms_g + 1e-12)
    zero = torch.zeros((), dtype=torch.float32, device=p.device)
    prev = drift = zero
    if "imp_prev" in st:
        sc["prev_min"], sc["prev_max"] = sums["prev_min"], sums["prev_max"]
        prev = (sums["prev_mean"] - sc["prev_min"]) / (sc["prev_max"] - sc["prev_min"] + 1e-12)
        drift = (_flat_rms(sums["dd"], n) / sc["rms_p"]).clamp(max=10.0)
    sc["imp_rng"] = sc["imp_max"] - sc["imp_min"] + 1e-12      # per-tensor, so chunks do not recompute it
    if "imp_prev" in st:
        sc["prev_rng"] = sc["prev_max"] - sc["prev_min"] + 1e-12
    imp_mean = (sums["imp_mean"] - sc["imp_min"]) / sc["imp_rng"]
    consts = torch.tensor([0.1 * math.log(n), float(frac), 1.0 if p.dim() <= 1 else 0.0], dtype=torch.float32, device=p.device)
    token = torch.stack([
        0.1 * torch.log(rms_g + 1e-12), 0.1 * torch.log(sc["rms_p"]), consts[0], consts[1], consts[2],
        prev, drift, align, imp_mean,
    ])
    return sc, token


@torch.no_grad()
def advance_and_sum_(p: Tensor, g: Tensor, st: dict[str, Tensor], chunk: int, tmp: Tensor) -> dict[str, Tensor]:
    """Advance the state in place (as `advance_state`) and return `tensor_sums` of the result.

    One pass over memory: each chunk of the gradient, parameter and statistics is advanced and
    then reduced while it is still in cache, instead of five update passes and seven reduction
    passes over whole tensors. p, g and the statistics must be contiguous float32; `tmp` is a
    (chunk,) work buffer. The sums are chunk-wise partial sums added up, so they equal the
    whole-tensor ones up to float32 summation order.
    """
    names = (*MOMENTS, "v", "imp")
    flat = {k: st[k].view(-1) for k in names}
    pf, gf, n = p.view(-1), g.view(-1), p.numel()
    cons = "imp_prev" in st
    ip, an = (st["imp_prev"].view(-1), st["anchor"].view(-1)) if cons else (None, None)
    parts: list[list[Tensor]] = []
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        pc, gc, c = pf[s:e], gf[s:e], {k: v[s:e] for k, v in flat.items()}
        for k, d in zip(MOMENTS, DECAYS):
            c[k].lerp_(gc, 1 - d)
        c["v"].mul_(BETA2).addcmul_(gc, gc, value=1 - BETA2)
        c["imp"].lerp_(torch.mul(gc, pc, out=tmp[: e - s]).abs_(), 1 - IMP_DECAY)
        m1 = c["m1"]
        lo, hi = torch.aminmax(c["imp"])
        row = [torch.dot(pc, pc), torch.dot(m1, m1), torch.dot(gc, gc), torch.dot(m1, gc), lo, hi, c["imp"].sum()]
        if cons:
            lo2, hi2 = torch.aminmax(ip[s:e])
            dl = torch.sub(pc, an[s:e], out=tmp[: e - s])
            row += [lo2, hi2, ip[s:e].sum(), torch.dot(dl, dl)]
        parts.append(row)
    cols = torch.stack([torch.stack(r) for r in parts])  # (chunks, k)
    tot = cols.sum(0)
    out = {"pp": tot[0], "mm": tot[1], "gg": tot[2], "mg": tot[3], "imp_min": cols[:, 4].min(),
           "imp_max": cols[:, 5].max(), "imp_mean": tot[6] / n}
    if cons:
        out.update(prev_min=cols[:, 7].min(), prev_max=cols[:, 8].max(), prev_mean=tot[9] / n, dd=tot[10])
    return out


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


@torch.no_grad()
def linear_update_(p: Tensor, g: Tensor, st: dict[str, Tensor], sc: dict, coef: list[float], alpha: float,
                   num: Tensor, den: Tensor) -> Tensor:
    """Linear head, in place: p -= alpha * (param_features(p, g, st, sc, clamp=False) @ coef).

    All arguments are flat (N,) slices of one tensor; `num`, `den` are (N,) work buffers; `sc`
    holds floats (`rms_p`, `imp_min`, `imp_rng`, [`prev_min`, `prev_rng`]) and the bias corrections.
    The per-feature divisions are folded into the coefficients, so the features are never
    materialised: the moments are summed into one numerator divided once by the RMS, and the
    parameter, importance and drift features become scaled adds (12 passes over a chunk, 15 after
    `consolidate`). Min-max features are shifted before scaling (not folded into a constant) so a
    near-constant importance cannot cancel catastrophically. Same numbers as the formula up to
    float32 rounding (tests/test_learned_optimizer_speed.py).
    """
    c = coef
    torch.div(st["v"], sc["bc2"], out=den).add_(1e-16).sqrt_().add_(EPS)
    torch.mul(g, c[0], out=num)
    for j, k in enumerate(MOMENTS):
        num.add_(st[k], alpha=c[1 + j] / sc["bc_" + k])
    consolidated = "imp_prev" in st
    kp = (c[4] + (c[7] if consolidated else 0.0)) / sc["rms_p"]
    p.mul_(1.0 - alpha * kp)  # the value (and drift) features read the old p: scale it first
    p.addcdiv_(num, den, value=-alpha)
    torch.sub(st["imp"], sc["imp_min"], out=num)
    p.add_(num, alpha=-alpha * c[5] / sc["imp_rng"])
    if consolidated:
        torch.sub(st["imp_prev"], sc["prev_min"], out=num)
        p.add_(num, alpha=-alpha * c[6] / sc["prev_rng"])
        p.add_(st["anchor"], alpha=alpha * c[7] / sc["rms_p"])
    return p
