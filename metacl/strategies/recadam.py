"""RecAdam (Chen et al. 2020): recall the pre-trained weights with an annealed quadratic pull.

    objective(t) = lambda(t) * L  +  (1 - lambda(t)) * gamma/2 * ||theta - theta_0||^2
    lambda(t)    = 1 / (1 + exp(-k (t - t0)))

theta_0 = the trainable parameters when the first task begins (the pre-trained model); t =
optimizer steps since then. Early on (lambda ~ 0) the model is held at theta_0; after t0 the
task loss takes over. Implemented as a gradient edit in `before_step`:

    grad <- lambda(t) * grad + (1 - lambda(t)) * gamma * (theta - theta_0)

which is exactly the gradient of the objective above, handed to whatever optimizer the loop
built (AdamW gives RecAdam). Why not an extra loss: the loop normalises the token-weighted
loss, so scaling L by lambda(t) can only be expressed on the gradient. Because it rescales the
full gradient, it composes with token-weighting strategies (`--strategy taalm recadam`): their
weighted loss is the L here.

Hyperparameters: --recadam-gamma, --recadam-k, --recadam-t0 (steps; a value < 1 is a fraction of
the run's total steps).
"""

from __future__ import annotations

import argparse
import math

import torch

from metacl.strategies.anchor import snapshot
from metacl.strategies.base import Strategy, TrainContext, register
from metacl.strategies.options import check_positive


def anneal_lambda(t: float, k: float, t0: float) -> float:
    """The sigmoid schedule lambda(t) = 1 / (1 + exp(-k (t - t0))), overflow-safe."""
    z = -k * (t - t0)
    if z > 700:
        return 0.0
    return 1.0 / (1.0 + math.exp(z))


@register
class RecAdam(Strategy):
    name = "recadam"
    description = "RecAdam: anneal from a quadratic pull to the pre-trained weights towards the task loss"

    def __init__(self, recadam_gamma: float = 100.0, recadam_k: float = 0.2, recadam_t0: float = 0.1):
        self.gamma = check_positive(recadam_gamma, "--recadam-gamma")
        self.k = check_positive(recadam_k, "--recadam-k")
        self.t0_arg = check_positive(recadam_t0, "--recadam-t0")
        self.theta0: dict[str, torch.Tensor] | None = None
        self.t = 0

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--recadam-gamma", type=float, default=100.0, help="strength gamma of the pull to theta_0")
        parser.add_argument("--recadam-k", type=float, default=0.2, help="slope k of the annealing sigmoid")
        parser.add_argument("--recadam-t0", type=float, default=0.1,
                            help="midpoint t0 in steps (a value < 1 is a fraction of the total steps)")

    def t0(self, ctx: TrainContext) -> float:
        return self.t0_arg * max(ctx.total_steps, 1) if self.t0_arg < 1 else self.t0_arg

    def lam(self, ctx: TrainContext) -> float:
        return anneal_lambda(self.t, self.k, self.t0(ctx))

    def before_task(self, ctx: TrainContext) -> None:
        if self.theta0 is None:
            self.theta0 = snapshot(ctx.trainable())

    def before_step(self, ctx: TrainContext) -> None:
        lam = self.lam(ctx)
        ctx.scratch.setdefault(self.name, {})["lambda"] = lam
        with torch.no_grad():
            for n, p in ctx.trainable():
                pull = None
                if self.theta0 is not None and n in self.theta0:
                    pull = (1.0 - lam) * self.gamma * (p - self.theta0[n].to(p.device))
                if p.grad is None:
                    if pull is not None:
                        p.grad = pull.clone()
                    continue
                p.grad.mul_(lam)
                if pull is not None:
                    p.grad.add_(pull)

    def after_step(self, ctx: TrainContext) -> None:
        self.t += 1

    # theta0 is a snapshot taken in before_task from the base model: recomputed on resume.
    def state_dict(self) -> dict:
        return {"t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state.get("t", 0))
