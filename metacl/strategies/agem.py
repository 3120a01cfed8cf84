"""Averaged Gradient Episodic Memory (Chaudhry et al. 2019).

    g_ref = grad of the LM loss on a memory batch (pre-training text and earlier tasks' docs)
    if g . g_ref < 0:   g <- g - (g . g_ref / ||g_ref||^2) g_ref

Why: a step along g that has a negative dot product with g_ref increases the loss on the
memory to first order; after the projection g . g_ref = 0, so (to first order) the memory loss
does not go up, while the part of g that does not conflict is kept. The dot product is taken
over all trainable parameters at once (one flat vector), as in the paper.

Hyperparameters: --agem-mem-batch (memory documents per step), --agem-capacity (memory size,
a reservoir over `ctx.old_corpus` then `ctx.seen_docs`).
"""

from __future__ import annotations

import torch

from metacl.core.batching import tokenize_docs
from metacl.strategies.anchor import flat_dot
from metacl.strategies.base import Option, Strategy, TrainContext, register
from metacl.strategies.importance import mean_nll
from metacl.strategies.memory import Reservoir, sample_indices


def project_agem(g: dict[str, torch.Tensor], g_ref: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Return (projected gradient, whether a projection happened); inputs are not modified."""
    dot = flat_dot(g, g_ref)
    ref_sq = flat_dot(g_ref, g_ref)
    if dot >= 0 or ref_sq <= 0:
        return g, False
    coef = (dot / ref_sq).item()
    return {n: (g[n] - coef * g_ref[n]) if n in g_ref else g[n] for n in g}, True


@register
class AGEM(Strategy):
    name = "agem"
    needs_old_corpus = True
    description = "A-GEM: project the gradient so it does not increase the loss on a memory of old text"

    def __init__(self, agem_mem_batch: int = 4, agem_capacity: int = 256, agem_old_max: int = 5000):
        self.mem_batch = int(agem_mem_batch)
        self.capacity = int(agem_capacity)
        self.old_max = int(agem_old_max)
        self.memory: Reservoir | None = None
        self._offered_old = False
        self._offered_seen = 0
        self.projections = 0
        self.steps = 0

    options = {
        "agem_mem_batch": Option('memory documents per reference gradient'),
        "agem_capacity": Option('episodic memory size (documents)'),
        "agem_old_max": Option('max pre-training docs offered to the memory'),
    }

    def before_task(self, ctx: TrainContext) -> None:
        if self.memory is None:
            self.memory = Reservoir(self.capacity, ctx.generator)
        if not self._offered_old and ctx.old_corpus:
            idx = sample_indices(len(ctx.old_corpus), min(self.old_max, len(ctx.old_corpus)), ctx.generator)
            self.memory.extend(ctx.old_corpus[i] for i in idx)
            self._offered_old = True
        self.memory.extend(ctx.seen_docs[self._offered_seen :])
        self._offered_seen = len(ctx.seen_docs)

    def reference_gradient(self, ctx: TrainContext) -> dict[str, torch.Tensor] | None:
        if not self.memory or self.mem_batch <= 0:
            return None
        named = ctx.trainable()
        batch = tokenize_docs(ctx.tokenizer, self.memory.sample(self.mem_batch), ctx.max_length, ctx.device)
        with torch.enable_grad():
            grads = torch.autograd.grad(mean_nll(ctx.model, batch), [p for _, p in named], allow_unused=True)
        return {n: g for (n, _), g in zip(named, grads) if g is not None}

    def before_step(self, ctx: TrainContext) -> None:
        g_ref = self.reference_gradient(ctx)
        if g_ref is None:
            return
        named = [(n, p) for n, p in ctx.trainable() if p.grad is not None]
        g = {n: p.grad for n, p in named}
        new, projected = project_agem(g, g_ref)
        self.steps += 1
        if projected:
            self.projections += 1
            with torch.no_grad():
                for n, p in named:
                    p.grad.copy_(new[n])
        ctx.scratch.setdefault(self.name, {}).update(projected=projected, projection_rate=self.projections / self.steps)

    # The memory is filled in before_task (from ctx.generator): rebuilt identically on resume.
    def state_dict(self) -> dict:
        return {"steps": self.steps, "projections": self.projections}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.projections = int(state.get("steps", 0)), int(state.get("projections", 0))
