"""SPG: parameter-level soft masking (Konishi et al., 2023).

Why: hard masks (PackNet, HAT) waste capacity and freeze knowledge forever; SPG instead slows
each parameter down by how much earlier tasks depended on it, so shared knowledge can still be
refined. After a task, the loss gradient on that task's documents says which parameters matter:

    g       = mean over batches of dL/dtheta                          (signed)
    z       = (g - mean(g)) / std(g)                                  (standardised per tensor)
    imp_t   = |tanh(z)|                                               in [0, 1)
    imp     = max(imp, imp_t)                                         (accumulated over tasks)
    grad   <- grad * (1 - imp)                                        (before every optimizer step)

Why pre-training importance first: in one-shot LAMA-ckl the only task is the new facts, so the
knowledge to protect is what pre-training put there; `before_task` therefore estimates `imp` on a
sample of `ctx.old_corpus` when no importance exists yet.

Why `--spg-mask step` (our default): Adam divides each coordinate by its own running gradient
scale, so a gradient multiplied by a constant (1 - imp) gives almost the same Adam step: the
paper's gradient mask is close to a no-op under Adam. `step` therefore scales the optimizer's
*step* instead, p <- p_before + (1 - imp) (p_after - p_before), which is the intended slowdown
for any optimizer; `grad` applies the formula above literally (right for SGD).

Hyperparameters: --spg-docs (documents per importance estimate, default 64), --spg-mask step|grad.
"""

from __future__ import annotations

import torch

from metacl.core.batching import doc_batches
from metacl.errors import MetaclError
from metacl.strategies.base import Option, Strategy, TrainContext, register
from metacl.strategies.importance import gradient_importance
from metacl.strategies.memory import prior_texts, sample_indices

NamedTensors = dict[str, torch.Tensor]


def standardised_tanh_importance(grads: NamedTensors) -> NamedTensors:
    """|tanh((g - mean) / std)| per tensor; a constant tensor (std 0) gets importance 0."""
    out = {}
    for n, g in grads.items():
        g = g.float()
        if g.numel() < 2:
            out[n] = torch.zeros_like(g)
            continue
        std = g.std()
        z = (g - g.mean()) / std if std > 0 else torch.zeros_like(g)
        out[n] = torch.tanh(z).abs()
    return out


def signed_gradient(ctx: TrainContext, texts: list[str], n_docs: int, desc: str) -> NamedTensors:
    """Mean (signed) loss gradient of the trainable parameters over up to `n_docs` documents."""
    idx = sample_indices(len(texts), min(n_docs, len(texts)), ctx.generator)
    batches = doc_batches(ctx.tokenizer, [texts[i] for i in idx], ctx.batch_size, ctx.max_length, ctx.device)
    return gradient_importance(ctx.model, ctx.trainable(), batches, reduce="raw", per_example=False, progress=desc)


@register
class SPG(Strategy):
    name = "spg"
    needs_old_corpus = True
    description = "SPG: soft-mask each parameter's gradient by 1 - |tanh(standardised grad)| of earlier tasks"

    def __init__(self, spg_docs: int = 64, spg_mask: str = "step"):
        if int(spg_docs) < 1:
            raise MetaclError(f"--spg-docs must be >= 1, got {spg_docs}; pass e.g. --spg-docs 64")
        if spg_mask not in ("step", "grad"):
            raise MetaclError(f"--spg-mask must be step or grad, got {spg_mask!r}")
        self.mask = spg_mask
        self._before: dict[str, torch.Tensor] = {}
        self.n_docs = int(spg_docs)
        self.importance: NamedTensors = {}

    options = {
        "spg_docs": Option('documents per SPG importance estimate'),
        "spg_mask": Option('scale the optimizer step (default; works with Adam) or the gradient (paper, SGD)', choices=('step', 'grad')),
    }

    def accumulate(self, new: NamedTensors) -> None:
        """imp <- max(imp, new), elementwise (the SPG accumulation rule)."""
        for n, v in new.items():
            old = self.importance.get(n)
            self.importance[n] = v.detach().clone() if old is None else torch.maximum(old, v.detach())

    def before_task(self, ctx: TrainContext) -> None:
        if not self.importance:
            texts = prior_texts(ctx)
            if texts:
                g = signed_gradient(ctx, texts, self.n_docs, "spg importance (pre-training)")
                self.accumulate(standardised_tanh_importance(g))

    def before_step(self, ctx: TrainContext) -> None:
        if not self.importance:
            return
        with torch.no_grad():
            for n, p in ctx.trainable():
                imp = self.importance.get(n)
                if p.grad is None or imp is None:
                    continue
                if self.mask == "grad":
                    p.grad.mul_(1.0 - imp.to(p.grad.device, p.grad.dtype))
                else:
                    self._before[n] = p.detach().clone()

    def after_step(self, ctx: TrainContext) -> None:
        if not self._before:
            return
        with torch.no_grad():
            for n, p in ctx.trainable():
                if n in self._before:
                    w0 = self._before[n]
                    p.copy_(w0 + (1.0 - self.importance[n].to(p.device, p.dtype)) * (p - w0))
        self._before = {}

    def after_task(self, ctx: TrainContext) -> None:
        if ctx.train_docs:
            g = signed_gradient(ctx, list(ctx.train_docs), self.n_docs, "spg importance (task)")
            self.accumulate(standardised_tanh_importance(g))
