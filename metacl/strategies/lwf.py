"""Learning without Forgetting for language models (Li & Hoiem 2017, next-token form).

    loss = L_task + alpha * T^2 * mean_t KL( p_old(. | x_<t) / T  ||  p_new(. | x_<t) / T )

p_old is `ctx.reference_model()`, the frozen model as it was when the task began; the KL is
taken over the next-token distribution at every position of the *current* inputs that has a
target (no old data needed). Why T^2: it keeps the gradient scale independent of the
temperature (Hinton et al. 2015).

Hyperparameters: --lwf-alpha (weight of the distillation term), --lwf-temperature (T), --lwf-tokens.

`--lwf-tokens complement` (for compositions such as `--strategy taalm lwf`): each position counts
(1 - w_t), w_t the other strategies' combined token weight clipped to [0, 1], so the KL holds the
task-start predictions on the tokens the weighter says not to learn and leaves the weighted ones
(the new facts) to the NLL. Why: with every position distilled, the KL pulls the fact tokens back to
the old model's guess, the same tokens the weighted NLL moves, and the two fight; the complement
keeps the old behaviour only on the text around the facts.
"""

from __future__ import annotations

import torch

from metacl.engine.losses import distill_kl, label_mask
from metacl.errors import MetaclError
from metacl.strategies.base import Batch, Option, Strategy, TrainContext, register
from metacl.strategies.options import check_positive

TOKENS = ("all", "complement")


def next_token_kl(old_logits: torch.Tensor, new_logits: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Masked mean over positions of KL(softmax(old/T) || softmax(new/T)), times T^2.

    `mask` is (B, T) aligned with labels (column t = the target at t, predicted at t-1), so the
    logits at positions :-1 are compared where mask[:, 1:] is set (`distill_kl` does the math).
    """
    return distill_kl(old_logits[:, :-1], new_logits[:, :-1], temperature, mask[:, 1:])


@register
class LwF(Strategy):
    name = "lwf"
    description = "LwF: distil the task-start model's next-token distributions on the current documents"

    def __init__(self, lwf_alpha: float = 1.0, lwf_temperature: float = 2.0, lwf_tokens: str = "all"):
        self.alpha = check_positive(lwf_alpha, "--lwf-alpha")
        self.T = check_positive(lwf_temperature, "--lwf-temperature")
        if self.T == 0:
            raise MetaclError("--lwf-temperature must be > 0; pass e.g. --lwf-temperature 2")
        if lwf_tokens not in TOKENS:
            raise MetaclError(f"--lwf-tokens {lwf_tokens!r} is not one of {', '.join(TOKENS)}; pass --lwf-tokens all")
        self.tokens = lwf_tokens

    options = {
        "lwf_alpha": Option('weight of the distillation KL'),
        "lwf_temperature": Option('softmax temperature T'),
        "lwf_tokens": Option("positions distilled: all targets, or 'complement' = weighted by 1 - the other "
                             "strategies' token weights (e.g. --strategy taalm lwf)", choices=TOKENS),
    }

    def check_composition(self, strategies: list[Strategy]) -> None:
        if self.tokens == "complement" and not any(s is not self and s.weights_tokens() for s in strategies):
            names = " ".join(s.name for s in strategies)
            raise MetaclError(f"lwf --lwf-tokens complement needs a token-weighting strategy beside it (--strategy {names} "
                              "has none, so every position would count 0); add one, e.g. --strategy taalm lwf, or pass --lwf-tokens all")

    def distill_mask(self, ctx: TrainContext, batch: Batch) -> torch.Tensor:
        """(B, T) per-target weight of the KL, aligned with labels."""
        mask = label_mask(batch)
        if self.tokens == "all":
            return mask
        w = ctx.token_weights
        if w is None or w.shape != mask.shape:
            raise MetaclError("lwf --lwf-tokens complement found no token weights for this batch (the training loop sets "
                              "ctx.token_weights before extra_loss); run it through `metacl ckl run`")
        return mask * (1.0 - w.to(mask.dtype).clamp(0.0, 1.0))

    def before_task(self, ctx: TrainContext) -> None:
        ctx.reference_model()  # snapshot now, before any step of this task

    def extra_loss(self, ctx: TrainContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        ref = ctx.reference_model()
        with torch.no_grad():
            old = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return self.alpha * next_token_kl(old, logits, self.distill_mask(ctx, batch), self.T)
