"""Memories of old data for replay-like strategies (replay, mix-review, A-GEM, ...).

Why here: several strategies draw old text the same way (uniform samples, a bounded reservoir
of the stream); keeping the sampling in one place makes their mechanisms comparable and their
draws reproducible from `ctx.generator`. Text -> batches is `metacl.core.batching`.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from metacl.errors import MetaclError


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


def prior_texts(ctx) -> list[str]:
    """What the 'old task' was when nothing has been learned yet: pre-training text, else none."""
    return list(ctx.old_corpus)
