"""`taalm`: learn each document with the token weights of a meta-trained TokenWeighter.

Why: the weighter was meta-trained so that a weighted update on a document makes the LM answer
questions about that document (and, with the retention term, keeps old facts); here it is only
*used*: every training batch gets `w = weighter(document)` and the loop's loss becomes
`sum(w * nll) / sum(w)`. The weights come from the `token_weights` hook, so they multiply with
any other strategy's weights (`--strategy taalm rho1`) and the update itself is whatever the
optimizer does (AdamW, SGD, the learned optimizer): nothing here touches gradients.
"""

from __future__ import annotations

import torch

from metacl.errors import MetaclError
from metacl.strategies.base import Batch, Option, Strategy, TrainContext, register


def load_predictor(path: str, tokenizer, device) -> "torch.nn.Module":
    """Load a saved TokenWeighter (or a cross-fit folder of them), frozen, checking it shares the
    base LM's tokenizer."""
    from metacl.meta.crossfit import CrossFitWeighter, is_crossfit
    from metacl.meta.token_weighting import TokenWeighter

    if is_crossfit(path):
        tw = CrossFitWeighter.from_folder(path, base_tokenizer=tokenizer, device=device)
    else:
        tw = TokenWeighter.from_pretrained(path, base_tokenizer=tokenizer, device=device)
    for p in tw.parameters():
        p.requires_grad_(False)
    return tw.eval()


def route_predictor(predictor, ctx: TrainContext) -> None:
    """A cross-fit weighter learns which fold each of this task's documents belongs to (others: no-op)."""
    if hasattr(predictor, "route"):
        predictor.route(ctx.tokenizer, ctx.train_docs, ctx.max_length)


@torch.no_grad()
def predictor_weights(predictor, batch: Batch) -> torch.Tensor:
    """(B, T) float32 weights for `batch`, zero where the label is ignored (-100)."""
    dev = next(predictor.parameters()).device
    w = predictor(batch["input_ids"].to(dev), batch["attention_mask"].to(dev)).float()
    return w.to(batch["labels"].device) * (batch["labels"] != -100).float()


@register
class TAALM(Strategy):
    name = "taalm"
    description = "weight each token's loss by a meta-trained token-importance predictor (TAALM)"

    def __init__(self, taalm_predictor: str | None = None, **_):
        if not taalm_predictor:
            raise MetaclError(
                "strategy taalm needs --taalm-predictor PATH (the --out folder of `metacl meta-train token-weighting`)"
            )
        self.path = taalm_predictor
        self.predictor = None

    options = {
        "taalm_predictor": Option('token weighter saved by `metacl meta-train token-weighting` (its best/ folder or --out)', metavar='PATH'),
    }

    def preflight(self, model_path: str) -> None:
        """Refuse a predictor that is missing or built for another tokenizer, before a run writes anything.

        Cheap (tokenizers and JSON only); `run_ckl` and `ckl sequence` call it ahead of `--out`.
        """
        from metacl.meta.crossfit import check_crossfit_tokenizer, is_crossfit
        from metacl.meta.token_weighting import check_saved_weighter_tokenizer
        from metacl.models.loading import load_tokenizer

        check = check_crossfit_tokenizer if is_crossfit(self.path) else check_saved_weighter_tokenizer
        check(self.path, load_tokenizer(model_path))

    def before_task(self, ctx: TrainContext) -> None:
        if self.predictor is None:
            self.predictor = load_predictor(self.path, ctx.tokenizer, ctx.device)
            self.token_weight_norm = self.predictor.loss_norm  # divide the way it was meta-trained
        route_predictor(self.predictor, ctx)

    def token_weights(self, ctx: TrainContext, batch: Batch, nll: torch.Tensor) -> torch.Tensor:
        if self.predictor is None:  # the loop may skip before_task in unit use
            self.before_task(ctx)
        w = predictor_weights(self.predictor, batch)
        ctx.scratch.setdefault(self.name, {})["mean_weight"] = float(w.sum() / (batch["labels"] != -100).sum().clamp(min=1))
        return w.to(nll.dtype)
