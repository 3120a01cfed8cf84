"""RHO-1 selective language modelling (Lin et al. 2024): train on the tokens that matter.

    excess_t = nll_t(model) - nll_t(reference)
    w_t      = 1 if excess_t is among the top k% of the batch's target tokens, else 0

The loop then minimises sum(w * nll) / sum(w): only the selected tokens carry gradient.
Why: tokens the current model already predicts as well as the reference (or that are noise
for both) waste capacity; tokens with high excess loss are the learnable ones. Weights are
binary and multiply with other strategies' token weights (`--strategy taalm rho1`).

Two references, named apart:

- `rho1` (TAALM's variant, what the LAMA-ckl table ran): the reference is the frozen model at
  task start. Its excess loss is exactly 0 at the first step (model = reference), so the first
  selection is tie-breaking; later it measures what the model changed since the task began.
- `rho1_ref` (the paper's): the reference is a separate LM trained on high-quality data, given
  by path (--rho1-ref-model), sharing the base LM's tokenizer. Why a path and not a reference
  fitted inside the run: in CKL the only "old" data a run has is the pre-training corpus the
  base LM was already trained on, so a reference fitted on it would be the task-start model
  again; RHO-1's point is a reference that has seen curated data close to the target
  distribution, which only the user can supply: typically the base LM fine-tuned on curated text
  (same tokenizer by construction) and saved with `save_pretrained`. `metacl pretrain` fits a
  new tokenizer to its corpus, so its output is refused unless the tokenizers happen to agree.

Hyperparameters: --rho1-ratio (fraction k of target tokens kept per batch); rho1_ref:
--rho1-ref-model PATH, --rho1-ref-ratio.
"""

from __future__ import annotations

import math

import torch

from metacl.engine.losses import label_mask, token_nll
from metacl.errors import MetaclError
from metacl.strategies.base import Batch, Option, Strategy, TrainContext, register


def select_top_excess(excess: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, T) 0/1 weights: the ceil(ratio * n_valid) valid positions with the largest excess."""
    valid = mask > 0
    n_valid = int(valid.sum())
    k = min(n_valid, math.ceil(ratio * n_valid))
    w = torch.zeros_like(excess, dtype=torch.float32)
    if k == 0:
        return w
    scores = excess.float().masked_fill(~valid, float("-inf")).flatten()
    idx = torch.topk(scores, k).indices
    w.view(-1)[idx] = 1.0
    return w


@register
class Rho1(Strategy):
    name = "rho1"
    description = "RHO-1 (TAALM's variant): train only on the top-k% tokens by excess loss over the task-start model"

    def __init__(self, rho1_ratio: float = 0.6):
        if not (0 < rho1_ratio <= 1):
            raise MetaclError(f"--rho1-ratio must be in (0, 1], got {rho1_ratio}; pass e.g. --rho1-ratio 0.6")
        self.ratio = float(rho1_ratio)

    options = {"rho1_ratio": Option("fraction of target tokens trained on per batch")}

    def before_task(self, ctx: TrainContext) -> None:
        ctx.reference_model()  # freeze the reference before the first step of the task

    def reference(self, ctx: TrainContext) -> torch.nn.Module:
        """The model whose per-token loss is subtracted: here the frozen task-start model."""
        return ctx.reference_model()

    def token_weights(self, ctx: TrainContext, batch: Batch, nll: torch.Tensor) -> torch.Tensor | None:
        with torch.no_grad():
            ref_nll = token_nll(self.reference(ctx), batch)
        if ref_nll.shape != nll.shape:  # loop aligned its NLL without the leading column
            ref_nll = ref_nll[:, ref_nll.shape[1] - nll.shape[1]:]
            mask = label_mask(batch)[:, -nll.shape[1]:]
        else:
            mask = label_mask(batch)
        w = select_top_excess(nll.detach() - ref_nll, mask, self.ratio)
        ctx.scratch.setdefault(self.name, {})["selected_fraction"] = float(w.sum() / mask.sum().clamp_min(1))
        return w


@register
class Rho1Reference(Rho1):
    """RHO-1 with the paper's reference: a separately trained LM loaded from --rho1-ref-model."""

    name = "rho1_ref"
    description = "RHO-1 (paper): top-k% tokens by excess loss over a reference LM trained on high-quality data (by path)"

    def __init__(self, rho1_ref_model: str | None = None, rho1_ref_ratio: float = 0.6):
        if not rho1_ref_model:
            raise MetaclError("rho1_ref needs --rho1-ref-model PATH: a causal LM saved with save_pretrained, trained on "
                              "high-quality data, with the base LM's tokenizer (or use rho1 for the task-start reference)")
        if not (0 < rho1_ref_ratio <= 1):
            raise MetaclError(f"--rho1-ref-ratio must be in (0, 1], got {rho1_ref_ratio}; pass e.g. --rho1-ref-ratio 0.6")
        self.ratio = float(rho1_ref_ratio)
        self.path = str(rho1_ref_model)
        self._ref: torch.nn.Module | None = None

    options = {
        "rho1_ref_model": Option("reference LM trained on high-quality data (same tokenizer as --model)", metavar="PATH"),
        "rho1_ref_ratio": Option("fraction of target tokens trained on per batch"),
    }

    def preflight(self, model_path: str) -> None:
        """Refuse a missing reference, or one with another tokenizer, before a run writes anything."""
        from metacl.meta.token_weighting import tokenizer_fingerprint
        from metacl.models.loading import check_causal_lm_path, load_tokenizer

        check_causal_lm_path(self.path)
        if tokenizer_fingerprint(load_tokenizer(self.path)) != tokenizer_fingerprint(load_tokenizer(model_path)):
            raise MetaclError(f"--rho1-ref-model {self.path}: its tokenizer differs from the base LM's ({model_path}); "
                              "the excess loss compares the two token by token, so train the reference with the same tokenizer")

    def before_task(self, ctx: TrainContext) -> None:
        if self._ref is None:
            from metacl.models.loading import load_model_and_tokenizer

            ref, _ = load_model_and_tokenizer(self.path, device=ctx.device)
            for p in ref.parameters():
                p.requires_grad_(False)
            self._ref = ref.eval()

    def reference(self, ctx: TrainContext) -> torch.nn.Module:
        if self._ref is None:
            self.before_task(ctx)
        return self._ref
