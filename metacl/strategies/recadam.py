"""RecAdam (Chen et al. 2020): recall the pre-trained weights with an annealed, decoupled quadratic pull.

    objective(t) = lambda(t) * L  +  (1 - lambda(t)) * gamma/2 * ||theta - theta_0||^2
    lambda(t)    = 1 / (1 + exp(-k (t - t0)))

theta_0 = the trainable parameters when the first task begins (the pre-trained model); t =
optimizer steps since then. Early on (lambda ~ 0) the model is held at theta_0; after t0 the
task loss takes over. As in RecAdam's optimizer, the two parts of the objective are *not* added
into one gradient (Adam would renormalise the pull away, and the loop's gradient clipping would
cut it): the optimizer sees the task gradient only, and each step is

    theta' = theta + lambda(t) * step_opt                       (the optimizer's step, scaled)
    theta  = theta' - lr * (1 - lambda(t)) * gamma * (theta' - theta_0)      (decoupled pull)

with lr the parameter group's learning rate. A pull coefficient lr * (1 - lambda) * gamma above
1 would jump past theta_0, so it is capped at 1 (theta lands on theta_0); with the learned
optimizer, whose "lr" is a multiplier on its own step, this cap is what holds theta at theta_0
early on. Implemented around the optimizer step (`before_step` snapshots, `after_step` rescales
and pulls), so it works with any optimizer the loop built and composes with token-weighting
strategies (`--strategy taalm recadam`): their weighted loss is the L here.

Hyperparameters: --recadam-gamma, --recadam-k, --recadam-t0 (steps; a value < 1 is a fraction of
the run's total steps).
"""

from __future__ import annotations

import math

import torch

from metacl.strategies.anchor import snapshot
from metacl.strategies.base import Option, Strategy, TrainContext, register
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
    description = "RecAdam: optimizer step scaled by lambda(t) plus a decoupled pull to the pre-trained weights, annealed"

    def __init__(self, recadam_gamma: float = 100.0, recadam_k: float = 0.2, recadam_t0: float = 0.1):
        self.gamma = check_positive(recadam_gamma, "--recadam-gamma")
        self.k = check_positive(recadam_k, "--recadam-k")
        self.t0_arg = check_positive(recadam_t0, "--recadam-t0")
        self.theta0: dict[str, torch.Tensor] | None = None
        self.t = 0
        self._before: dict[str, torch.Tensor] = {}
        self._lam = 1.0

    options = {
        "recadam_gamma": Option("strength gamma of the pull to theta_0"),
        "recadam_k": Option("slope k of the annealing sigmoid"),
        "recadam_t0": Option("midpoint t0 in steps (a value < 1 is a fraction of the total steps)"),
    }

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
        self._lam = lam
        with torch.no_grad():
            self._before = {n: p.detach().clone() for n, p in ctx.trainable() if self.theta0 is not None and n in self.theta0}

    def after_step(self, ctx: TrainContext) -> None:
        lam = self._lam
        lrs = {}
        if ctx.optimizer is not None:
            for g in ctx.optimizer.param_groups:
                for p in g["params"]:
                    lrs[id(p)] = float(g.get("lr", 0.0))
        with torch.no_grad():
            for n, p in ctx.trainable():
                w0 = self._before.get(n)
                if w0 is None:
                    continue
                p.copy_(w0 + lam * (p - w0))                                   # the optimizer's step, scaled by lambda
                c = min(1.0, lrs.get(id(p), 0.0) * (1.0 - lam) * self.gamma)   # decoupled pull towards theta_0
                if c > 0:
                    p.sub_(c * (p - self.theta0[n].to(p.device, p.dtype)))
        self._before = {}
        self.t += 1

    # theta0 is a snapshot taken in before_task from the base model: recomputed on resume.
    def state_dict(self) -> dict:
        return {"t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state.get("t", 0))
