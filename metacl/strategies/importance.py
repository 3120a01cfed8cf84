"""Per-parameter importance from gradients: the diagonal Fisher (EWC, NCL) and gradient magnitudes (SPG, DAS, TASL).

Everything here works on `(name, parameter)` pairs, so it is agnostic to how the model is
wrapped (LoRA, adapters): pass `ctx.trainable()` and importance follows what actually trains.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from metacl.core.batching import Batch, doc_batches
from metacl.engine.losses import label_mask, token_nll
from metacl.strategies.memory import sample_indices

NamedTensors = dict[str, torch.Tensor]


def mean_nll(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token NLL of `model` (its own weights) over the labelled tokens of `batch`."""
    nll = token_nll(model, batch)
    m = label_mask(batch)
    return (nll * m).sum() / m.sum().clamp_min(1.0)


def gradient_importance(
    model: nn.Module,
    named: list[tuple[str, nn.Parameter]],
    batches: Iterable[Batch],
    reduce: str = "square",
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = mean_nll,
    per_example: bool = True,
    progress: str | None = None,
) -> NamedTensors:
    """Average over examples of `reduce(d loss / d theta)` per parameter.

    `reduce="square"` with `per_example=True` is the diagonal empirical Fisher (EWC, NCL);
    `reduce="abs"` is the gradient magnitude importance of SPG/DAS-style methods. Per-example
    gradients matter for the Fisher: the square of a batch-mean gradient underestimates it.
    The model's weights and `.grad` are left untouched.
    """
    from tqdm.auto import tqdm

    if reduce not in ("square", "abs", "raw"):
        raise ValueError(f"reduce must be square|abs|raw, got {reduce}")
    params = [p for _, p in named]
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}
    count = 0

    def rows(b: Batch) -> Iterator[Batch]:
        if not per_example:
            yield b
            return
        for i in range(b["input_ids"].shape[0]):
            yield {k: v[i : i + 1] for k, v in b.items()}

    was_training = model.training
    model.eval()  # no dropout noise in the importance estimate
    batches = list(batches)
    for b in tqdm(batches, desc=progress or "importance", disable=None if progress else True, leave=False):
        for row in rows(b):
            if label_mask(row).sum() == 0:
                continue
            with torch.enable_grad():
                grads = torch.autograd.grad(loss_fn(model, row), params, allow_unused=True)
            for (n, _), g in zip(named, grads):
                if g is None:
                    continue
                g = g.float()
                acc[n] += g * g if reduce == "square" else (g.abs() if reduce == "abs" else g)
            count += 1
    model.train(was_training)
    return {n: a / max(count, 1) for n, a in acc.items()}


def diagonal_fisher(model: nn.Module, named, batches: Iterable[Batch], progress: str | None = None) -> NamedTensors:
    """Diagonal empirical Fisher: E_x[(d log p(x) / d theta)^2] over the given documents."""
    return gradient_importance(model, named, batches, reduce="square", per_example=True, progress=progress)


def fisher_on_docs(ctx, texts: Sequence[str], n_docs: int, progress: str | None = None) -> NamedTensors:
    """Diagonal Fisher of `ctx.trainable()` on up to `n_docs` documents sampled from `texts`."""
    idx = sample_indices(len(texts), min(n_docs, len(texts)), ctx.generator)
    docs = [texts[i] for i in idx]
    batches = doc_batches(ctx.tokenizer, docs, ctx.batch_size, ctx.max_length, ctx.device)
    return diagonal_fisher(ctx.model, ctx.trainable(), batches, progress=progress)
