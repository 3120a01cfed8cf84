"""Learning without Forgetting for language models (Li & Hoiem 2017, next-token form).

    loss = L_task + alpha * T^2 * mean_t KL( p_old(. | x_<t) / T  ||  p_new(. | x_<t) / T )

p_old is `ctx.reference_model()`, the frozen model as it was when the task began; the KL is
taken over the next-token distribution at every position of the *current* inputs that has a
target (no old data needed). Why T^2: it keeps the gradient scale independent of the
temperature (Hinton et al. 2015).

Hyperparameters: --lwf-alpha (weight of the distillation term), --lwf-temperature (T).
"""

from __future__ import annotations

import torch

from metacl.engine.losses import distill_kl, label_mask
from metacl.strategies.base import Batch, Option, Strategy, TrainContext, register
from metacl.strategies.options import check_positive


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

    def __init__(self, lwf_alpha: float = 1.0, lwf_temperature: float = 2.0):
        self.alpha = check_positive(lwf_alpha, "--lwf-alpha")
        self.T = check_positive(lwf_temperature, "--lwf-temperature")
        if self.T == 0:
            from metacl.errors import MetaclError

            raise MetaclError("--lwf-temperature must be > 0; pass e.g. --lwf-temperature 2")

    options = {
        "lwf_alpha": Option('weight of the distillation KL'),
        "lwf_temperature": Option('softmax temperature T'),
    }

    def before_task(self, ctx: TrainContext) -> None:
        ctx.reference_model()  # snapshot now, before any step of this task

    def extra_loss(self, ctx: TrainContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        ref = ctx.reference_model()
        with torch.no_grad():
            old = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return self.alpha * next_token_kl(old, logits, label_mask(batch), self.T)
