"""The learned optimizer's network, as pure functions of a dict of meta-parameters.

Two parts, so cost stays bounded on large models:

1. A small transformer over T *tensor tokens* (one summary vector per parameter tensor, see
   `features.tensor_token`). Attention lets each tensor's update depend on the state of the
   others (e.g. damp a layer while a neighbouring one is still moving). Cost O(T^2 * d).
2. A tiny per-parameter MLP on the per-parameter features, conditioned on the tensor's context
   vector through a per-tensor hidden bias and a per-tensor log step-scale. Cost O(P * H * F).

The output for each parameter is  update = direction * exp(magnitude) * exp(log_scale + s_tensor)
and the optimizer applies  p <- p - lr * update. `direction` has a linear skip from the features
initialised to the bias-corrected 0.9-momentum over RMS, so an untrained network is Adam-like
(lr = exp(log_scale)) and meta-training refines from there instead of from noise.

Why functional (a dict, no nn.Module): meta-training differentiates through hundreds of inner
steps with `metacl.engine`, which wants the meta-parameters as plain tensors closed over by the
functional optimizer; deployment and save/load use the same dict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metacl.optim.features import N_PARAM_FEATURES, N_TOKEN_FEATURES

SKIP_FEATURE = 2  # index of m(0.9)/sqrt(v) in features.param_features
DRIFT_FEATURE = 7  # index of (p - anchor) / rms(p): the pull back to the anchor (`LearnedOptimizer(anchor_lr=...)`)


@dataclass
class NetConfig:
    d_model: int = 16
    n_layers: int = 2
    n_heads: int = 4
    hidden: int = 16
    n_param_features: int = N_PARAM_FEATURES
    n_token_features: int = N_TOKEN_FEATURES
    init_lr: float = 1e-3       # exp(log_scale) at init: the Adam-like learning rate
    max_log_mag: float = 2.0    # exp(magnitude) is clamped to [exp(-6), exp(max_log_mag)]
    head: str = "mlp"           # per-parameter head: "mlp" (the shipped weights) or "linear" (see HEADS)
    # True: the starting weights count as a finished task, i.e. every tensor is consolidated before its
    # first step (anchor = the weights it starts from, old importance 0). Why: a CKL run learns one task
    # from a pretrained LM and never reaches a task boundary, so without this the drift-from-anchor
    # features (the ones that can learn an L2-SP-like pull back to what the model knew) are zero for
    # the whole run. Weights trained with it must be deployed with it: it is part of their config.
    anchor_start: bool = False
    # linear head: the per-feature scale of its coefficients (None = COEF_FEATURE_SCALE); saved with the weights
    coef_scale: tuple[float, ...] | None = None
    # linear head: an importance-weighted pull back to the anchor, applied beside the step and not scaled by
    # lr: p -= rho_T * pull_ratio(old importance) * (p - anchor), rho_T = PULL_MAX * sigmoid(per-tensor logit
    # from the transformer). Why: the linear head mixes features additively, so the old importance can
    # only push a parameter by a constant, never hold it where it matters (the product importance x drift,
    # EWC's gradient, is not among its features). Useful with old importance measured on old data (`prime`).
    imp_pull: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        cfg = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        if cfg.head not in HEADS:
            from metacl.errors import MetaclError

            raise MetaclError(f"NetConfig head={cfg.head!r} is unknown; use one of {', '.join(HEADS)}")
        if cfg.imp_pull and cfg.head != "linear":
            from metacl.errors import MetaclError

            raise MetaclError("NetConfig imp_pull=True needs head='linear'; pass --head linear or drop --imp-pull")
        return cfg


# The per-parameter head. "mlp": a GELU MLP on every parameter's features (F -> H -> 2, plus a
# linear skip), conditioned per tensor through a hidden bias; what the shipped weights use. It costs
# ~350 flop and 16 GELUs per parameter, which alone is 3-4x a whole AdamW step on CPU (see
# docs/benchmarks.md). "linear": the transformer emits, per tensor, one coefficient per feature
# and the update is that tensor's linear mix of the (unclamped) features times its step scale:
# ~10 flop per parameter, a few fused passes over the state, the cost class of AdamW. It keeps
# everything that is per-tensor (the tensor tokens, the attention over them, the continual-learning
# features) and gives up the per-parameter nonlinearity; it needs its own meta-trained weights.
HEADS = ("mlp", "linear")
# The linear head's context path is damped: coefficients = coef.b + CTX_COEF_SCALE * ctx @ coef.w.
# Why: Adam (the meta-optimizer) moves every entry of a coef.w column by ~meta_lr per step, all in
# the same direction early on, so an undamped path shifts a coefficient by ~d_model * meta_lr * |ctx|
# per meta-step, which wrecked short meta-trainings on the toy family (held-out meta-loss 1.04 ->
# 6.34 in 40 steps); damped by 0.1 the same run reached 0.29, against a tuned AdamW's 1.03
# (experiments/lo_toy_tuned.py, docs/results/lo_toy_tuned/summary.json).
# Under Adam a constant factor is a per-parameter-group learning rate, so this is that, built in.
CTX_COEF_SCALE = 0.1
# Per-feature scale of the linear head's coefficients (the order of `features.param_features`:
# g, m(0.5), m(0.9), m(0.99) over RMS; p / rms(p); importance; old importance; drift). The first
# four are Adam-like directions of size ~1 and keep scale 1. The last four are not gradient
# directions: the value and drift features act as a decay rate lr * c / rms(p) per step, the
# importance features as a constant push of lr * c; at scale 1 a meta-step of Adam (~meta_lr on c)
# turns them into a per-step decay of ~0.1-1 at a toy's lr 0.3, which is what made 40-step toy
# meta-trainings diverge (held-out meta-loss 182 against a tuned AdamW's 1.02, seed 1). At 0.01
# the same meta-step moves them as much as an Adam-like weight decay of 1e-4 per unit of lr.
COEF_FEATURE_SCALE = (1.0, 1.0, 1.0, 1.0, 0.01, 0.01, 0.01, 0.01)
# The importance-weighted pull (`NetConfig.imp_pull`): its per-step rate is at most PULL_MAX (with
# `features.pull_ratio` < 1 every step is a contraction towards the anchor) and starts at PULL_MAX / 10.
PULL_MAX = 0.1
PULL_INIT_LOGIT = -math.log(9.0)  # sigmoid = 0.1


def coef_scale(cfg: NetConfig | None) -> tuple[float, ...]:
    """The linear head's per-feature coefficient scale of `cfg` (the module default if it sets none)."""
    if cfg is None or cfg.coef_scale is None:
        return COEF_FEATURE_SCALE
    if len(cfg.coef_scale) != len(COEF_FEATURE_SCALE):
        from metacl.errors import MetaclError

        raise MetaclError(f"NetConfig coef_scale has {len(cfg.coef_scale)} entries; give one per feature "
                          f"({len(COEF_FEATURE_SCALE)}, the order of features.param_features)")
    return tuple(float(x) for x in cfg.coef_scale)


def init_meta(cfg: NetConfig, seed: int = 0) -> dict[str, Tensor]:
    """Fresh meta-parameters (float32, CPU). Deterministic given `seed`."""
    g = torch.Generator().manual_seed(seed)
    d, H, Fp, Ft = cfg.d_model, cfg.hidden, cfg.n_param_features, cfg.n_token_features

    def w(*shape, std):
        return torch.randn(*shape, generator=g) * std

    meta = {"tok.w": w(Ft, d, std=1 / math.sqrt(Ft)), "tok.b": torch.zeros(d)}
    for i in range(cfg.n_layers):
        pre = f"layer{i}."
        for n in ("q", "k", "v"):
            meta[pre + n] = w(d, d, std=1 / math.sqrt(d))
        meta[pre + "o"] = w(d, d, std=0.5 / math.sqrt(d))
        meta[pre + "ff1"] = w(d, 2 * d, std=1 / math.sqrt(d))
        meta[pre + "ff2"] = w(2 * d, d, std=0.5 / math.sqrt(2 * d))
        for n in ("ln1", "ln2"):
            meta[pre + n + ".g"] = torch.ones(d)
            meta[pre + n + ".b"] = torch.zeros(d)
    if cfg.head == "linear":
        # coefficients = coef.b + ctx @ coef.w; coef.b picks m(0.9)/sqrt(v) and coef.w is small, so the
        # untrained optimizer is close to Adam(beta1=0.9) with lr = init_lr, as for the MLP head (coef.w
        # is not 0 so that the meta-gradient reaches the transformer from the first step)
        meta["ctx_s.w"] = torch.zeros(d)
        meta["coef.w"] = w(d, Fp, std=0.1 / math.sqrt(d))  # x CTX_COEF_SCALE: ~0.01/sqrt(d) in effect
        meta["coef.b"] = torch.zeros(Fp)
        meta["coef.b"][SKIP_FEATURE] = 1.0
        meta["log_scale"] = torch.tensor(math.log(cfg.init_lr))
        if cfg.imp_pull:
            meta["pull.w"] = torch.zeros(d)
            meta["pull.b"] = torch.tensor(PULL_INIT_LOGIT)
        return meta
    meta["ctx_h.w"] = w(d, H, std=0.1 / math.sqrt(d))
    meta["ctx_s.w"] = torch.zeros(d)
    meta["mlp1.w"] = w(Fp, H, std=1 / math.sqrt(Fp))
    meta["mlp1.b"] = torch.zeros(H)
    meta["mlp2.w"] = w(H, 2, std=1e-3)
    meta["mlp2.b"] = torch.zeros(2)
    skip = torch.zeros(Fp, 2)
    skip[SKIP_FEATURE, 0] = 1.0
    meta["skip.w"] = skip
    meta["log_scale"] = torch.tensor(math.log(cfg.init_lr))
    return meta


def _ln(x: Tensor, g: Tensor, b: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], g, b)


def tensor_context(meta: dict[str, Tensor], cfg: NetConfig, tokens: Tensor) -> Tensor:
    """(T, n_token_features) -> (T, d_model): pre-LN transformer encoder over tensor tokens."""
    T, d, nh = tokens.shape[0], cfg.d_model, cfg.n_heads
    x = tokens.to(meta["tok.w"].dtype) @ meta["tok.w"] + meta["tok.b"]
    for i in range(cfg.n_layers):
        pre = f"layer{i}."
        h = _ln(x, meta[pre + "ln1.g"], meta[pre + "ln1.b"])
        q, k, v = (
            (h @ meta[pre + n]).view(T, nh, d // nh).transpose(0, 1) for n in ("q", "k", "v")
        )
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d // nh), dim=-1)
        x = x + (att @ v).transpose(0, 1).reshape(T, d) @ meta[pre + "o"]
        h = _ln(x, meta[pre + "ln2.g"], meta[pre + "ln2.b"])
        x = x + F.gelu(h @ meta[pre + "ff1"]) @ meta[pre + "ff2"]
    return x


def tensor_conditioning(meta: dict[str, Tensor], ctx: Tensor, cfg: NetConfig | None = None) -> tuple[Tensor, Tensor]:
    """Per-tensor conditioning from the context vectors, and the bounded log step-scale (T,).

    MLP head: the hidden bias (T, H). Linear head: the feature coefficients (T, F).
    """
    log_s = 2.0 * torch.tanh(ctx @ meta["ctx_s.w"])
    if "coef.w" in meta:
        scale = torch.tensor(coef_scale(cfg), dtype=ctx.dtype, device=ctx.device)
        return (meta["coef.b"] + CTX_COEF_SCALE * (ctx @ meta["coef.w"])) * scale, log_s
    return ctx @ meta["ctx_h.w"], log_s


def pull_rates(meta: dict[str, Tensor], cfg: NetConfig, ctx: Tensor) -> Tensor | None:
    """(T,) per-tensor rates of the importance-weighted pull (`NetConfig.imp_pull`), or None without it."""
    if not cfg.imp_pull:
        return None
    return PULL_MAX * torch.sigmoid(meta["pull.b"] + CTX_COEF_SCALE * (ctx @ meta["pull.w"]))


def linear_update(meta: dict[str, Tensor], feats: Tensor, coef: Tensor, log_s: Tensor) -> Tensor:
    """Linear head: (N, F) unclamped features -> (N,) update, one tensor's coefficients (F,)."""
    return (feats.to(coef.dtype) @ coef) * torch.exp(meta["log_scale"] + log_s)


def param_update(meta: dict[str, Tensor], cfg: NetConfig, feats: Tensor, h_bias: Tensor, log_s: Tensor) -> Tensor:
    """(N, F) features of one tensor (or chunk) -> (N,) update to subtract (times the group lr)."""
    feats = feats.to(meta["mlp1.w"].dtype)
    h = F.gelu(feats @ meta["mlp1.w"] + meta["mlp1.b"] + h_bias)
    out = h @ meta["mlp2.w"] + meta["mlp2.b"] + feats @ meta["skip.w"]
    mag = torch.exp(out[:, 1].clamp(-6.0, cfg.max_log_mag))
    return out[:, 0] * mag * torch.exp(meta["log_scale"] + log_s)


def meta_numel(meta: dict[str, Tensor]) -> int:
    return sum(t.numel() for t in meta.values())


# ---------------------------------------------------------------------------------------------
# Eager fast path for `LearnedOptimizer.step` (no autograd). Same maths as `param_update`, laid
# out for throughput: features are kept transposed, (F, N), in the top rows of one buffer whose
# bottom rows receive the hidden layer, (H, N). Then layer 1 is one addmm (bias + per-tensor
# bias fused), GELU runs in place, and the output layer *and* the linear skip are one addmm of
# [skip.w; mlp2.w]^T (2, F+H) against the whole buffer. No (N, H) temporaries are allocated per
# chunk and every row the elementwise ops touch is contiguous.

_gelu_ = getattr(torch._C._nn, "gelu_", None)  # in-place GELU; fall back to a copy if absent


def fast_weights(meta: dict[str, Tensor]) -> dict[str, Tensor]:
    """Transposed/concatenated copies of the per-parameter MLP weights (tiny; rebuilt per step)."""
    return {
        "w1t": meta["mlp1.w"].t().contiguous(),                                          # (H, F)
        "w2t": torch.cat([meta["skip.w"], meta["mlp2.w"]], 0).t().contiguous(),          # (2, F+H)
        "b2": meta["mlp2.b"].reshape(2, 1),
    }


@torch.no_grad()
def param_update_into(fw: dict[str, Tensor], cfg: NetConfig, buf: Tensor, out: Tensor, b1: Tensor, scale: Tensor) -> Tensor:
    """`param_update` for a chunk whose features fill `buf[:F]`; returns the (N,) update (a view of `out`).

    buf: (F+H, N), rows [:F] hold the transposed features, rows [F:] are overwritten.
    out: (2, N) work buffer. b1: (H, 1) = mlp1.b + the tensor's hidden bias. scale: exp(log_scale + log_s).
    """
    F_ = fw["w1t"].shape[1]
    h = buf[F_:]
    torch.addmm(b1, fw["w1t"], buf[:F_], out=h)
    if _gelu_ is not None:
        _gelu_(h)
    else:
        h.copy_(F.gelu(h))
    torch.addmm(fw["b2"], fw["w2t"], buf, out=out)
    mag = out[1].clamp_(-6.0, cfg.max_log_mag).exp_()
    return out[0].mul_(mag).mul_(scale)
