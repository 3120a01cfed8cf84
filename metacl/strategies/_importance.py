"""Shared helpers for continual-learning strategies: old-text batches, memories, importance.

Why one module: EWC, NCL, SPG, DAS, OSFT, ... all need the same few ingredients (a snapshot of
the parameters, a per-parameter importance estimated from gradients on some documents, a
quadratic pull towards an anchor), and replay-like methods (replay, mix-review, A-GEM) all need
to turn raw text into a batch that can be concatenated with the loop's batch. Writing these
once keeps every strategy module short and makes their mechanisms comparable.

Everything here works on `(name, parameter)` pairs, so it is agnostic to how the model is
wrapped (LoRA, adapters): pass `ctx.trainable()` and importance follows what actually trains.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metacl.errors import MetaclError
from metacl.engine.losses import label_mask, nll_from_logits  # noqa: F401  (re-exported for strategies)

Batch = dict[str, torch.Tensor]
NamedTensors = dict[str, torch.Tensor]


# --- text -> batches --------------------------------------------------------------------

def pad_id(tokenizer: Any) -> int:
    """The id used for padding: pad, else eos, else 0 (the mask makes the choice irrelevant)."""
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0


def tokenize_docs(tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device | str = "cpu") -> Batch:
    """Tokenize documents into a right-padded causal-LM batch (labels = inputs, padding = -100)."""
    rows = []
    for t in texts:
        ids = tokenizer(t, truncation=True, max_length=max_length)["input_ids"]
        rows.append(list(ids)[:max_length] or [pad_id(tokenizer)])
    T = max(len(r) for r in rows)
    pid = pad_id(tokenizer)
    ids = torch.full((len(rows), T), pid, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _pad_to(x: torch.Tensor, T: int, value: int) -> torch.Tensor:
    if x.shape[1] >= T:
        return x
    return F.pad(x, (0, T - x.shape[1]), value=value)


def concat_batches(a: Batch, b: Batch, pad: int) -> Batch:
    """Stack two batches row-wise, right-padding the shorter one (mask 0, label -100)."""
    T = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    fill = {"input_ids": pad, "attention_mask": 0, "labels": -100}
    out = dict(a)
    for k, v in fill.items():
        out[k] = torch.cat([_pad_to(a[k], T, v), _pad_to(b[k].to(a[k].device), T, v)], dim=0)
    return out


def sample_indices(n_items: int, k: int, generator: torch.Generator | None) -> list[int]:
    """k indices drawn uniformly without replacement (with replacement if k > n_items)."""
    if n_items <= 0 or k <= 0:
        return []
    if k <= n_items:
        return torch.randperm(n_items, generator=generator)[:k].tolist()
    return torch.randint(n_items, (k,), generator=generator).tolist()


class Reservoir:
    """A bounded memory with reservoir sampling (Vitter's algorithm R).

    After `n` items have been offered, each of them is in the buffer with probability
    `capacity / n`, whatever the order they came in: an unbiased sample of the stream that
    never grows past `capacity`. The generator makes it reproducible.
    """

    def __init__(self, capacity: int, generator: torch.Generator | None = None):
        if capacity < 1:
            raise MetaclError(f"replay buffer capacity must be >= 1, got {capacity}; pass a positive size")
        self.capacity = int(capacity)
        self.items: list[Any] = []
        self.seen = 0
        self.generator = generator

    def add(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            return
        j = int(torch.randint(self.seen, (1,), generator=self.generator))
        if j < self.capacity:
            self.items[j] = item

    def extend(self, items: Iterable[Any]) -> None:
        for it in items:
            self.add(it)

    def sample(self, k: int) -> list[Any]:
        return [self.items[i] for i in sample_indices(len(self.items), k, self.generator)]

    def __len__(self) -> int:
        return len(self.items)


# --- losses -----------------------------------------------------------------------------
# `nll_from_logits` and `label_mask` come from the engine: one alignment convention everywhere.

def token_nll(model: nn.Module, batch: Batch) -> torch.Tensor:
    """(B, T) next-token NLL aligned with `labels`: column t is -log p(labels[t] | tokens < t).

    Column 0 and ignored labels (-100) are 0. This is the same alignment the training loop
    uses for token weights, so strategies can compare our numbers with the loop's `nll`.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return nll_from_logits(logits, batch["labels"])


def mean_nll(model: nn.Module, batch: Batch) -> torch.Tensor:
    nll = token_nll(model, batch)
    m = label_mask(batch)
    return (nll * m).sum() / m.sum().clamp_min(1.0)


# --- parameters and importance ----------------------------------------------------------

def snapshot(named: Iterable[tuple[str, torch.Tensor]]) -> NamedTensors:
    """Detached copies of parameters, e.g. the anchor theta* of EWC or theta_0 of RecAdam."""
    return {n: p.detach().clone() for n, p in named}


def flat_dot(a: NamedTensors, b: NamedTensors) -> torch.Tensor:
    return sum((a[n].double() * b[n].double()).sum() for n in a if n in b)


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


def doc_batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int, device) -> list[Batch]:
    return [tokenize_docs(tokenizer, texts[i : i + batch_size], max_length, device) for i in range(0, len(texts), batch_size)]


def fisher_on_docs(ctx, texts: Sequence[str], n_docs: int, progress: str | None = None) -> NamedTensors:
    """Diagonal Fisher of `ctx.trainable()` on up to `n_docs` documents sampled from `texts`."""
    idx = sample_indices(len(texts), min(n_docs, len(texts)), ctx.generator)
    docs = [texts[i] for i in idx]
    batches = doc_batches(ctx.tokenizer, docs, ctx.batch_size, ctx.max_length, ctx.device)
    return diagonal_fisher(ctx.model, ctx.trainable(), batches, progress=progress)


class QuadraticAnchor:
    """An online diagonal Gaussian prior around an anchor: penalty 1/2 sum F (theta - theta*)^2.

    `consolidate` implements the online-EWC update F <- gamma F_old + F_new and moves the
    anchor to the current parameters. EWC uses the penalty as a loss; NCL also uses F as the
    precision of its preconditioner.
    """

    def __init__(self, gamma: float = 1.0):
        self.gamma = float(gamma)
        self.fisher: NamedTensors = {}
        self.anchor: NamedTensors = {}

    @property
    def empty(self) -> bool:
        return not self.fisher

    def consolidate(self, new_fisher: NamedTensors, named) -> None:
        for n, f in new_fisher.items():
            old = self.fisher.get(n)
            self.fisher[n] = f.detach().clone() if old is None else self.gamma * old + f.detach()
        self.anchor = snapshot(named)

    def set_anchor(self, named) -> None:
        self.anchor = snapshot(named)

    def penalty(self, named) -> torch.Tensor:
        """1/2 sum_i F_i (theta_i - theta*_i)^2 over the parameters that have a Fisher entry."""
        total = None
        for n, p in named:
            if n not in self.fisher or n not in self.anchor:
                continue
            d = p - self.anchor[n].to(p.device)
            term = 0.5 * (self.fisher[n].to(p.device) * d * d).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return total

    def state(self, prefix: str) -> NamedTensors:
        """Tensors to checkpoint (safetensors-friendly flat names)."""
        out = {f"{prefix}.fisher.{n}": t for n, t in self.fisher.items()}
        out.update({f"{prefix}.anchor.{n}": t for n, t in self.anchor.items()})
        return out


def prior_texts(ctx) -> list[str]:
    """What the 'old task' was when nothing has been learned yet: pre-training text, else none."""
    return list(ctx.old_corpus)


def check_positive(value: float, flag: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise MetaclError(f"{flag} must be a finite number >= 0, got {value!r}; pass e.g. {flag} 1.0")
    return float(value)
