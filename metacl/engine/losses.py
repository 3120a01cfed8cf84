"""Loss functions in the form `unroll` expects: `loss_fn(model, params, batch) -> scalar`.

Why functional: the inner loop must evaluate the model at *new* parameter tensors (the
output of the previous update) without writing them into the module. `torch.func.functional_call`
does exactly that; parameters and buffers absent from `params` come from the model itself.

Token NLL layout (the one every metacl strategy uses): `token_nll` returns (B, T), aligned
with `batch["labels"]`: entry [b, t] is -log p(labels[b, t] | input_ids[b, :t]). Position 0
has no prediction and is 0, as is every position whose label is -100. Token weights have the
same (B, T) shape and the same alignment.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metacl.core.batching import Batch
from metacl.errors import MetaclError


def _logits(model: nn.Module, params: dict[str, Tensor], batch: Batch) -> Tensor:
    for key in ("input_ids", "labels"):
        if key not in batch:
            raise MetaclError(f"LM batch has no '{key}' (keys: {sorted(batch)}); pass dict(input_ids, attention_mask, labels)")
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"]}
    if batch.get("attention_mask") is not None:
        kwargs["attention_mask"] = batch["attention_mask"]
    if getattr(model, "config", None) is not None and hasattr(model.config, "use_cache"):
        kwargs["use_cache"] = False  # a KV cache is useless here and costs memory
    out = functional_call(model, params, args=(), kwargs=kwargs)
    return out.logits if hasattr(out, "logits") else out


def nll_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """(B, T) next-token NLL aligned with `labels` from already computed logits (B, T, V).

    The one place the alignment convention is implemented: the training loop and strategies
    that run the model themselves call this too, so every NLL in metacl lines up.
    """
    if logits.shape[:-1] != labels.shape:
        raise MetaclError(
            f"model logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}; labels must be aligned with input_ids (B, T)"
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    target = labels[..., 1:]
    pred = logits[..., :-1, :]
    valid = target != -100
    nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.clamp_min(0).reshape(-1), reduction="none")
    nll = nll.view(target.shape) * valid.to(nll.dtype)
    return F.pad(nll, (1, 0))


def token_nll(model: nn.Module, params: dict[str, Tensor] | Batch, batch: Batch | None = None) -> Tensor:
    """Per-token negative log-likelihood, shape (B, T), aligned with `batch["labels"]`.

    Column 0 and ignored labels (-100) are 0. Computed in float32 or wider, whatever the model dtype.
    `token_nll(model, batch)` (no params) scores the model with its own weights: the one token
    NLL for the engine, the strategies and the tests.
    """
    if batch is None:
        params, batch = {}, params
    return nll_from_logits(_logits(model, params, batch), batch["labels"])


def label_mask(batch: Batch) -> Tensor:
    """(B, T) float mask of positions that carry a next-token target (same layout as `token_nll`)."""
    return F.pad((batch["labels"][..., 1:] != -100).float(), (1, 0))


def lm_loss(model: nn.Module, params: dict[str, Tensor], batch: Batch, token_weights: Tensor | None = None) -> Tensor:
    """Weighted causal-LM loss sum(w * nll) / sum(w) over positions with a label.

    `token_weights` (B, T) default to `batch.get("token_weights")`, then to 1. Taking them
    from the batch lets `unroll(..., per_example=True)` give every meta-example its own weights.
    Gradients flow into the weights (that is how a token-importance model is meta-trained).
    """
    nll = token_nll(model, params, batch)
    mask = label_mask(batch).to(nll.dtype)
    if token_weights is None:
        token_weights = batch.get("token_weights")
    if token_weights is None:
        w = mask
    else:
        if token_weights.shape != nll.shape:
            raise MetaclError(
                f"token_weights has shape {tuple(token_weights.shape)} but token_nll is {tuple(nll.shape)}; "
                "give one weight per (example, position), aligned with labels"
            )
        w = token_weights.to(nll.dtype) * mask
    return (w * nll).sum() / w.sum().clamp_min(torch.finfo(nll.dtype).tiny)


def functional_loss(
    criterion: Callable[[Any, Any], Tensor], inputs: str = "input", targets: str | None = "target"
) -> Callable[[nn.Module, dict[str, Tensor], Batch], Tensor]:
    """Build `loss_fn(model, params, batch)` from an ordinary criterion.

    `criterion(model_output, batch[targets])` (or `criterion(model_output, batch)` when
    targets is None); the model is called functionally on `batch[inputs]`. Example:
    `functional_loss(torch.nn.functional.cross_entropy, inputs="x", targets="y")`.
    """

    def loss_fn(model: nn.Module, params: dict[str, Tensor], batch: Batch) -> Tensor:
        if inputs not in batch or (targets is not None and targets not in batch):
            raise MetaclError(f"batch keys {sorted(batch)} lack '{inputs}' or '{targets}'; pass them or set functional_loss(inputs=..., targets=...)")
        out = functional_call(model, params, (batch[inputs],))
        return criterion(out, batch[targets] if targets is not None else batch)

    return loss_fn


def distill_kl(old_logits: Tensor, new_logits: Tensor, temperature: float, mask: Tensor | None = None) -> Tensor:
    """T^2 * mean over positions of KL(softmax(old/T) || softmax(new/T)), the KL over the last dim.

    The one distillation loss of metacl: LwF on LMs (`metacl.strategies.lwf.next_token_kl`, on
    shifted logits) and LwF on Split-Digits (`metacl.benchmarks.split_digits`, on (B, C) logits).
    `mask` has the logits' leading shape; positions where it is 0 do not count, and the mean is
    over the counted ones. Why T^2: it keeps the gradient scale independent of the temperature
    (Hinton et al. 2015). Computed in float32 so bf16 logits do not lose the small KL terms.
    """
    T = float(temperature)
    old = F.log_softmax(old_logits.float() / T, dim=-1)
    new = F.log_softmax(new_logits.float() / T, dim=-1)
    kl = (old.exp() * (old - new)).sum(-1)
    if mask is None:
        return kl.mean() * T * T
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0) * T * T
