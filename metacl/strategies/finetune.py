"""`finetune`: plain continued training of every parameter: the reference every method must beat.

It does nothing but make sure all parameters train; the loop's default loss (mean next-token
NLL over the document) and the chosen optimizer do the rest. Composed with another strategy it
simply re-enables gradients for the whole model, so put it first if you use it that way.
"""

from __future__ import annotations

from metacl.strategies.base import Strategy, TrainContext, register


@register
class Finetune(Strategy):
    name = "finetune"
    description = "plain fine-tuning of all parameters on the new documents (the baseline)"

    def before_task(self, ctx: TrainContext) -> None:
        for p in ctx.model.parameters():
            p.requires_grad_(True)
