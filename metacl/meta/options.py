"""Optional changes to token-weighter meta-training: the hypotheses of issue 19, one switch each.

None is a default: nobody has yet measured whether any of them raises closure (see
docs/results/taalm_v2_plan.md for the ablation plan). Every default reproduces the original
computation exactly, and a checkpoint made before these options existed still resumes.

- `inner_norm="tokens"` -- the inner loss is `sum(w * nll) / n_tokens` (the mean over the
  document's tokens of w * nll) instead of `sum(w * nll) / sum(w)`. With the normalised loss a
  global rescale of the weights has zero effect (and zero meta-gradient), so the weighter can
  only redistribute; unnormalised, the total amount of weight is learnable too, and a weight
  of 0 really removes a token. Deployment follows: the saved weighter says `loss_norm: tokens`
  and `--strategy taalm` then divides by the token count, not by the weights.
- `weight_head="softplus"` -- weights `softplus(z)` (unbounded, starting at 1) as CaMeLS uses,
  instead of `sigmoid(z)` in (0, 1), whose saturated uniform start is an absorbing state.
- `temperature=T` -- weights `act(z / T)`: T < 1 sharpens the weights towards 0/1 and scales
  the gradient through the head by 1/T; the start is unchanged (the head's init is scaled by T).
- `sparsity=lambda` -- adds `lambda * mean weight` to the meta-loss, a pressure towards few
  weighted tokens (an L1 penalty; weights are non-negative).
- `span_supervision=lambda` -- adds `lambda * BCE(w, object mask)` over each meta-train
  document's label tokens to the meta-loss: the weighter is also told, on meta-training data only,
  which tokens spell the answer of the document's probe (its `object`, found as the `oracle`
  strategy finds it). Why: the bilevel meta-gradient through AdamW is smooth only at ~1e-6
  (docs/results/taalm_v2_plan.md), and a sigmoid weighter starting saturated near 1 sits in an
  absorbing state; the answer spans of meta-train facts are already in the meta-training data, so
  a dense, well-conditioned signal costs nothing extra. Test documents and probes are never seen.
  Sigmoid head only (BCE needs weights in (0, 1)).
- `span_share=lambda` -- adds `lambda * -log(sum(w * mask) / sum(w))`, per document, averaged: the
  share of the document's weight mass on its answer tokens. Why beside the BCE: under the default
  inner loss `sum(w * nll) / sum(w)` only that share decides where the update goes, and with ~80
  other tokens per answer token a per-token BCE can reach a low loss while 90% of the mass is
  still elsewhere (measured: docs/results/taalm_v2_ablation/). Scale-free, so it cannot be met by
  shrinking every weight.
- `span_warmup=N` -- the first N meta-steps optimise only the span terms above (no inner loop:
  a weighter forward and backward, ~1/20 of a bilevel step), then the bilevel meta-loss (plus
  the span terms) takes over; N >= `steps` is a purely supervised answer-span detector. Why: mixed
  from step 0, the bilevel meta-gradient (norms 10-200, clipped to 1 together with the span terms)
  drowns the span signal, and the saturated start needs many steps to leave (measured:
  docs/results/taalm_v2_ablation/).
- `learn_inner_lr=True` -- the inner learning rate is a meta-parameter, `exp(log_lr)`, trained
  with the weighter by the outer optimizer (meant for `--inner-optimizer sgd`, whose step, unlike
  AdamW's near-`lr * sign(g)` first step, is linear in the gradient and so in the weights).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from metacl.errors import MetaclError

if TYPE_CHECKING:  # torch is imported inside the functions: `metacl --help` stays fast
    import torch

DEFAULTS: dict[str, Any] = {"inner_norm": "weights", "weight_head": "sigmoid", "temperature": 1.0,
                            "sparsity": 0.0, "learn_inner_lr": False, "span_supervision": 0.0,
                            "span_share": 0.0, "span_warmup": 0}
INNER_NORMS = ("weights", "tokens")
WEIGHT_HEADS = ("sigmoid", "softplus")


def add_args(p: argparse.ArgumentParser) -> None:
    """The options of `meta-train token-weighting` (defaults = the original computation)."""
    g = p.add_argument_group("hypotheses of issue 19 (off by default; docs/results/taalm_v2_plan.md)")
    g.add_argument("--inner-norm", choices=INNER_NORMS, default=DEFAULTS["inner_norm"],
                   help="inner loss sum(w*nll)/sum(w) (weights, default) or sum(w*nll)/n_tokens (tokens: unnormalised weights)")
    g.add_argument("--weight-head", choices=WEIGHT_HEADS, default=DEFAULTS["weight_head"],
                   help="weights sigmoid(z) in (0,1) (default) or softplus(z) >= 0, starting at 1 (CaMeLS)")
    g.add_argument("--weight-temperature", type=float, default=DEFAULTS["temperature"], metavar="T",
                   help="weights act(z / T); T < 1 sharpens them towards 0/1 (default 1)")
    g.add_argument("--sparsity", type=float, default=DEFAULTS["sparsity"], metavar="LAMBDA",
                   help="add LAMBDA * mean token weight to the meta-loss (default 0)")
    g.add_argument("--span-supervision", type=float, default=DEFAULTS["span_supervision"], metavar="LAMBDA",
                   help="add LAMBDA * BCE(weights, answer-token mask of each meta-train document) to the meta-loss "
                        "(default 0; sigmoid head only)")
    g.add_argument("--span-share", type=float, default=DEFAULTS["span_share"], metavar="LAMBDA",
                   help="add LAMBDA * -log(share of each meta-train document's weight on its answer tokens) (default 0)")
    g.add_argument("--span-warmup", type=int, default=DEFAULTS["span_warmup"], metavar="N",
                   help="the first N meta-steps train only the span terms (no inner loop); default 0")
    g.add_argument("--learn-inner-lr", action="store_true",
                   help="meta-learn the inner learning rate (exp of a scalar, starting at --inner-lr); meant with sgd")


def config_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """MetaConfig fields from parsed arguments."""
    return {"inner_norm": args.inner_norm, "weight_head": args.weight_head, "temperature": args.weight_temperature,
            "sparsity": args.sparsity, "learn_inner_lr": bool(args.learn_inner_lr),
            "span_supervision": args.span_supervision, "span_share": args.span_share,
            "span_warmup": args.span_warmup}


def check(cfg) -> None:
    """One-line errors for option values that cannot work."""
    if cfg.inner_norm not in INNER_NORMS:
        raise MetaclError(f"--inner-norm {cfg.inner_norm!r} is unknown; choose from {', '.join(INNER_NORMS)}")
    if cfg.weight_head not in WEIGHT_HEADS:
        raise MetaclError(f"--weight-head {cfg.weight_head!r} is unknown; choose from {', '.join(WEIGHT_HEADS)}")
    if not cfg.temperature > 0:
        raise MetaclError(f"--weight-temperature {cfg.temperature} must be > 0; pass e.g. 0.5")
    if not cfg.sparsity >= 0:
        raise MetaclError(f"--sparsity {cfg.sparsity} must be >= 0; pass 0 (off) or e.g. 0.1")
    if not cfg.span_supervision >= 0:
        raise MetaclError(f"--span-supervision {cfg.span_supervision} must be >= 0; pass 0 (off) or e.g. 1.0")
    if not cfg.span_share >= 0:
        raise MetaclError(f"--span-share {cfg.span_share} must be >= 0; pass 0 (off) or e.g. 1.0")
    if cfg.span_warmup < 0:
        raise MetaclError(f"--span-warmup {cfg.span_warmup} must be >= 0")
    if cfg.span_warmup > 0 and not (cfg.span_supervision > 0 or cfg.span_share > 0):
        raise MetaclError("--span-warmup needs --span-supervision or --span-share > 0 (the warm-up trains only those)")
    if cfg.span_supervision > 0 and cfg.weight_head != "sigmoid":
        raise MetaclError(f"--span-supervision needs --weight-head sigmoid (BCE needs weights in (0, 1)), got {cfg.weight_head}")


def head_kwargs(cfg) -> dict[str, Any]:
    """TokenWeighter construction options that a MetaConfig implies."""
    return {"activation": cfg.weight_head, "temperature": cfg.temperature, "loss_norm": cfg.inner_norm}


def non_default(cfg) -> dict[str, Any]:
    """The options that differ from the defaults (what a checkpoint's identity must add)."""
    return {k: getattr(cfg, k) for k, v in DEFAULTS.items() if getattr(cfg, k) != v}


def weighted_nll(nll: "torch.Tensor", mask: "torch.Tensor", w: "torch.Tensor", norm: str) -> "torch.Tensor":
    """sum(w * nll) divided by sum(w) (norm "weights") or by the number of label tokens ("tokens")."""
    import torch

    w = w * mask
    den = w.sum() if norm == "weights" else mask.sum()
    return (w * nll).sum() / den.clamp_min(torch.finfo(nll.dtype).tiny)


def doc_loss(norm: str):
    """The inner loss `loss_fn(model, params, batch)` with the weights carried in the batch."""
    from metacl.engine import lm_loss
    from metacl.engine.losses import label_mask, token_nll

    if norm == "weights":  # the original: the engine's lm_loss, unchanged
        def loss_fn(model, params, batch):
            b = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
            return lm_loss(model, params, b, token_weights=batch["token_weights"])
        return loss_fn

    def loss_fn(model, params, batch):
        b = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        nll = token_nll(model, params, b)
        return weighted_nll(nll, label_mask(b).to(nll.dtype), batch["token_weights"].to(nll.dtype), norm)
    return loss_fn


def answer_masks(tokenizer, docs: "torch.Tensor", attention: "torch.Tensor", objects: list[str]) -> "torch.Tensor":
    """(M, T) 0/1 targets: 1 at the tokens of each document window that spell its object.

    The same matching as the `oracle` strategy (token subsequence, else character offsets), so
    the supervised target is exactly the oracle's weights on meta-train documents.
    """
    import torch

    from metacl.core.answer_spans import object_token_mask

    rows = []
    for ids, am, obj in zip(docs.tolist(), attention.tolist(), objects):
        n = sum(am)
        real = ids[:n]
        mask = object_token_mask(real, tokenizer.decode(real, skip_special_tokens=True), obj, tokenizer)
        rows.append(mask + [0] * (len(ids) - n))
    return torch.tensor(rows, dtype=torch.float32, device=docs.device)


def span_bce(w: "torch.Tensor", target: "torch.Tensor", label_mask: "torch.Tensor") -> "torch.Tensor":
    """Mean binary cross-entropy of the weights against the answer mask over label tokens."""
    import torch

    eps = 1e-6
    wc = w.clamp(eps, 1 - eps)
    t = target.to(w.dtype)
    bce = -(t * wc.log() + (1 - t) * (1 - wc).log())
    return (bce * label_mask).sum() / label_mask.sum().clamp(min=1)


def span_share_loss(w: "torch.Tensor", target: "torch.Tensor", label_mask: "torch.Tensor") -> "torch.Tensor":
    """Mean over documents with an answer of -log(weight mass on the answer / all weight mass)."""
    import torch

    w = w * label_mask
    t = target.to(w.dtype) * label_mask
    has = t.sum(1) > 0
    if not bool(has.any()):
        return w.sum() * 0
    tiny = torch.finfo(w.dtype).tiny
    share = (w * t).sum(1).clamp_min(tiny) / w.sum(1).clamp_min(tiny)
    return -(share[has].log()).mean()


def inner_lr_parameter(cfg, like: "torch.Tensor") -> "torch.nn.Parameter | None":
    """log of the inner learning rate as a trainable scalar, or None when it is not learned."""
    if not cfg.learn_inner_lr:
        return None
    import math

    import torch

    return torch.nn.Parameter(torch.tensor(math.log(cfg.inner_lr), dtype=like.dtype, device=like.device))
