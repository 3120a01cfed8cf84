"""Natural Continual Learning (Kao, Jensen, van de Ven, Bernacchia, Hennequin 2021), diagonal form.

Prior after earlier tasks: a Gaussian N(mu, Lambda^-1) with diagonal precision

    Lambda = lambda * F + eta0         F = online Fisher (F <- gamma F_old + F_new, as in EWC),
                                       mu = parameters at the end of the previous task
                                       (first task: F from `ctx.old_corpus`, mu = task start)

Objective:  L(theta) + 1/2 sum_i Lambda_i (theta_i - mu_i)^2          (the quadratic prior)

Step (our exact rule, done in `before_step`, replacing the loop's optimizer step):

    g     = grad of the objective                 (task loss + prior term from `extra_loss`)
    d     = Lambda^-1 g                           (preconditioned by the prior precision)
    s     = sqrt(g . d) = ||d||_Lambda            (length of d in the prior's metric)
    step  = min(lr, rho / s)
    theta <- theta - step * d                     so that  (dtheta)^T Lambda (dtheta) <= rho^2

Why: NCL derives its update as the steepest descent step within a trust region measured by
the prior precision: directions the old tasks care about (large Lambda) move little, the rest
move freely, and the step length is capped by rho in that metric. The gradients are set to
None afterwards so the loop's optimizer (Adam) does not also step these parameters; put
gradient-editing strategies *before* ncl when composing.

Hyperparameters: --ncl-lambda, --ncl-gamma, --ncl-prior-precision (eta0), --ncl-lr,
--ncl-trust-radius (rho), --ncl-fisher-docs. Why these defaults (lambda 1000, eta0 0.01, lr 1e-3,
rho 1): on the 2,155,392-parameter world-v1 LM (runs/baselines1/base_lm) the gradient on new documents
was ~1e-2 per weight, so g / eta0 ~ 1 and a low-Fisher weight moved ~lr per step, like
AdamW at lr 1e-3, while weights with lambda F >> eta0 move proportionally less; rho = 1 caps
steps only when the gradient is unusually large (measured with experiments/baselines1_calibrate.py;
those figures were not kept; on the world-v2 LM mean |g / Lambda| is 0.43,
docs/results/baselines1_calibrate_v2/calibrate.json).
"""

from __future__ import annotations

import math

import torch

from metacl.strategies.anchor import QuadraticAnchor
from metacl.strategies.base import Batch, Option, Strategy, TrainContext, register
from metacl.strategies.importance import fisher_on_docs
from metacl.strategies.memory import prior_texts
from metacl.strategies.options import check_positive


def trust_region_step(grads: dict[str, torch.Tensor], precision: dict[str, torch.Tensor], lr: float, radius: float):
    """(delta, step_size, s) with delta = -min(lr, radius/s) * grads/precision, s = sqrt(g.P^-1.g)."""
    d = {n: g / precision[n] for n, g in grads.items()}
    s = math.sqrt(max(sum(float((grads[n].double() * d[n].double()).sum()) for n in grads), 0.0))
    step = lr if s == 0 else min(lr, radius / s)
    return {n: -step * v for n, v in d.items()}, step, s


@register
class NCL(Strategy):
    name = "ncl"
    needs_old_corpus = True
    description = "NCL (diagonal): diagonal Fisher prior + trust-region step preconditioned by the diagonal prior precision"

    def __init__(self, ncl_lambda: float = 1000.0, ncl_gamma: float = 1.0, ncl_prior_precision: float = 0.01,
                 ncl_lr: float = 1e-3, ncl_trust_radius: float = 1.0, ncl_fisher_docs: int = 64):
        self.lam = check_positive(ncl_lambda, "--ncl-lambda")
        self.eta0 = check_positive(ncl_prior_precision, "--ncl-prior-precision")
        if self.eta0 == 0:
            from metacl.errors import MetaclError

            raise MetaclError("--ncl-prior-precision must be > 0 (it keeps the preconditioner invertible); pass e.g. 1.0")
        self.lr = check_positive(ncl_lr, "--ncl-lr")
        self.radius = check_positive(ncl_trust_radius, "--ncl-trust-radius")
        self.fisher_docs = int(ncl_fisher_docs)
        self.prior = QuadraticAnchor(check_positive(ncl_gamma, "--ncl-gamma"))

    options = {
        "ncl_lambda": Option('Fisher scale lambda in the prior precision'),
        "ncl_gamma": Option('online decay of the old Fisher'),
        "ncl_prior_precision": Option('isotropic prior precision eta0 (> 0)'),
        "ncl_lr": Option("NCL learning rate (its own step, not the loop's)"),
        "ncl_trust_radius": Option('trust-region radius rho in the prior metric'),
        "ncl_fisher_docs": Option('documents per Fisher estimate'),
    }

    def precision(self, named) -> dict[str, torch.Tensor]:
        out = {}
        for n, p in named:
            f = self.prior.fisher.get(n)
            out[n] = (self.lam * f.to(p.device) + self.eta0) if f is not None else torch.full_like(p, self.eta0)
        return out

    def before_task(self, ctx: TrainContext) -> None:
        if self.prior.empty:
            texts = prior_texts(ctx)
            if texts:
                self.prior.consolidate(fisher_on_docs(ctx, texts, self.fisher_docs, "ncl fisher (pre-training)"), ctx.trainable())
        self.prior.set_anchor(ctx.trainable())

    def extra_loss(self, ctx: TrainContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        named = ctx.trainable()
        prec = self.precision(named)
        total = None
        for n, p in named:
            mu = self.prior.anchor.get(n)
            if mu is None:
                continue
            d = p - mu.to(p.device)
            term = 0.5 * (prec[n] * d * d).sum()
            total = term if total is None else total + term
        return total

    def before_step(self, ctx: TrainContext) -> None:
        named = [(n, p) for n, p in ctx.trainable() if p.grad is not None]
        if not named:
            return
        grads = {n: p.grad for n, p in named}
        delta, step, s = trust_region_step(grads, self.precision(named), self.lr, self.radius)
        with torch.no_grad():
            for n, p in named:
                p.add_(delta[n])
                p.grad = None  # this step replaces the optimizer's
        ctx.scratch.setdefault(self.name, {}).update(step_size=step, natural_grad_norm=s)

    def after_task(self, ctx: TrainContext) -> None:
        if ctx.train_docs:
            self.prior.consolidate(fisher_on_docs(ctx, ctx.train_docs, self.fisher_docs, "ncl fisher (task)"), ctx.trainable())
