"""Online Elastic Weight Consolidation (Kirkpatrick et al. 2017; online form of Schwarz et al. 2018).

    loss = L_task + lambda/2 * sum_i F_i (theta_i - theta*_i)^2
    F <- gamma * F_old + F_new           (after each task, F_new on that task's documents)
    theta* <- parameters at the end of the last task

F is the diagonal empirical Fisher (mean squared per-document gradient of the LM loss).
Why a pre-training Fisher: in LAMA-ckl the only task is learning new facts, so the knowledge to
protect is what pre-training put there. When no Fisher exists yet (first task), `before_task`
estimates it on a sample of `ctx.old_corpus` and anchors at the task-start parameters.

Hyperparameters: --ewc-lambda (penalty strength), --ewc-gamma (decay of old Fisher),
--ewc-fisher-docs (documents used per Fisher estimate).
"""

from __future__ import annotations

import torch

from metacl.strategies.anchor import QuadraticAnchor
from metacl.strategies.base import Batch, Option, Strategy, TrainContext, register
from metacl.strategies.importance import fisher_on_docs
from metacl.strategies.memory import prior_texts
from metacl.strategies.options import check_positive


@register
class EWC(Strategy):
    name = "ewc"
    needs_old_corpus = True
    description = "online EWC: Fisher-weighted quadratic pull to the previous task's weights (pre-training first)"

    def __init__(self, ewc_lambda: float = 1000.0, ewc_gamma: float = 1.0, ewc_fisher_docs: int = 64):
        self.lam = check_positive(ewc_lambda, "--ewc-lambda")
        self.gamma = check_positive(ewc_gamma, "--ewc-gamma")
        self.fisher_docs = int(ewc_fisher_docs)
        self.prior = QuadraticAnchor(self.gamma)

    options = {
        "ewc_lambda": Option('EWC penalty strength lambda'),
        "ewc_gamma": Option('online EWC decay of the old Fisher'),
        "ewc_fisher_docs": Option('documents per Fisher estimate'),
    }

    def before_task(self, ctx: TrainContext) -> None:
        if self.prior.empty:
            texts = prior_texts(ctx)
            if texts:
                self.prior.consolidate(fisher_on_docs(ctx, texts, self.fisher_docs, "ewc fisher (pre-training)"), ctx.trainable())
        self.prior.set_anchor(ctx.trainable())

    def extra_loss(self, ctx: TrainContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        if self.prior.empty:
            return None
        return self.lam * self.prior.penalty(ctx.trainable())

    def after_task(self, ctx: TrainContext) -> None:
        if ctx.train_docs:
            self.prior.consolidate(fisher_on_docs(ctx, ctx.train_docs, self.fisher_docs, "ewc fisher (task)"), ctx.trainable())
