"""The Split-Digits tasks (sklearn's 8x8 digits) and the small classifiers that learn them.

Why in the data layer: the learned optimizer meta-trains on these tasks (`metacl.optim`) and the
Split-Digits benchmark evaluates on them (`metacl.benchmarks`); both import them from here.
The `meta` and `bench` pools are disjoint halves of the images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacl.errors import MetaclError

SPLIT_PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
POOL_SEED = 12345
ARCHS = ("mlp", "cnn")


@dataclass
class Task:
    """One task: train/test tensors and the classes its loss/eval may use (None = all 10)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[int, ...] | None = None
    name: str = ""

    def mask(self) -> Tensor | None:
        if self.classes is None:
            return None
        m = torch.zeros(10, dtype=torch.bool)
        m[list(self.classes)] = True
        return m


_DIGITS: tuple[Tensor, Tensor] | None = None


def load_pool(pool: str) -> tuple[Tensor, Tensor]:
    """Images in [0, 1] as (N, 64) and labels, from the `meta` or `bench` half of the digits."""
    global _DIGITS
    if pool not in ("meta", "bench", "all"):
        raise MetaclError(f"unknown digits pool {pool!r}; use 'meta' (meta-training) or 'bench' (evaluation)")
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        _DIGITS = (torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target, dtype=torch.long))
    x, y = _DIGITS
    if pool == "all":
        return x, y
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(POOL_SEED))
    half = len(y) // 2
    idx = perm[:half] if pool == "meta" else perm[half:]
    return x[idx], y[idx]


def _split(x: Tensor, y: Tensor, g: torch.Generator, frac: float = 0.7) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    perm = torch.randperm(len(y), generator=g)
    n = int(round(frac * len(y)))
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


def make_task(x: Tensor, y: Tensor, classes: tuple[int, ...] | None, perm: Tensor | None, g: torch.Generator,
              masked: bool = True, name: str = "") -> Task:
    """A task from a pool: keep `classes` (None = all), optionally permute pixels, split 70/30."""
    if classes is not None:
        keep = torch.isin(y, torch.tensor(classes))
        x, y = x[keep], y[keep]
    if perm is not None:
        x = x[:, perm]
    xtr, ytr, xte, yte = _split(x, y, g)
    return Task(xtr, ytr, xte, yte, classes if (masked and classes is not None) else None, name)


def make_benchmark(name: str, seed: int = 0, scenario: str = "task", pool: str = "bench") -> list[Task]:
    """The 5-task sequence `split` or `permuted`; `seed` fixes splits and permutations."""
    if scenario not in ("task", "class"):
        raise MetaclError(f"unknown scenario {scenario!r}; use 'task' (masked heads) or 'class'")
    x, y = load_pool(pool)
    g = torch.Generator().manual_seed(seed)
    if name == "split":
        return [make_task(x, y, c, None, g, masked=scenario == "task", name=f"{c[0]}v{c[1]}") for c in SPLIT_PAIRS]
    if name == "permuted":
        return [make_task(x, y, None, torch.randperm(64, generator=g), g, name=f"perm{i}") for i in range(5)]
    raise MetaclError(f"unknown benchmark {name!r}; use 'split' or 'permuted'")


class DigitsCNN(nn.Module):
    """A small CNN on the 8x8 image (reshaped from 64 features): the 'unseen architecture'."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.c1 = nn.Conv2d(1, channels, 3, padding=1)
        self.c2 = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * channels * 16, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.c1(x.view(-1, 1, 8, 8)))
        h = F.relu(self.c2(h))
        return self.fc(h.flatten(1))


def make_model(arch: str = "mlp", seed: int = 0, hidden: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    if arch == "mlp":
        return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    if arch == "cnn":
        return DigitsCNN()
    raise MetaclError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


def masked_logits(logits: Tensor, mask: Tensor | None) -> Tensor:
    """Logits with classes outside the task set to -inf; mask (10,) or per-example (B, 10)."""
    if mask is None:
        return logits
    return logits.masked_fill(~mask.to(logits.device), float("-inf"))


@torch.no_grad()
def accuracy(model: nn.Module, task: Task) -> float:
    model.eval()
    pred = masked_logits(model(task.x_test), task.mask()).argmax(-1)
    model.train()
    return float((pred == task.y_test).float().mean())


def batches(task: Task, steps: int, batch_size: int, g: torch.Generator):
    """`steps` random minibatches (with replacement across batches) of a task's training set."""
    n = len(task.y_train)
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
        yield task.x_train[idx], task.y_train[idx]
