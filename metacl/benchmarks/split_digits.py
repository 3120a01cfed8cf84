"""Split-Digits and Permuted-Digits: small, offline continual-learning benchmarks.

Why digits: scikit-learn ships the 8x8 handwritten digits (1,797 images) inside the package, so
these benchmarks run anywhere, in seconds, with no download. They are the optimizee family of
the learned optimizer and the place where it is compared with classic CL baselines.

- `split`: 5 tasks of 2 classes ((0,1), (2,3), ...). Scenario `task` (default) masks the logits
  to the task's two classes in training and evaluation (task-incremental); `class` does not
  (class-incremental: much harder, forgetting dominates).
- `permuted`: 5 tasks, all 10 classes, each task a fixed random permutation of the 64 pixels.

The images are split once (fixed seed) into a *meta* pool (used only to meta-train the learned
optimizer) and a *bench* pool (used only here), so the benchmark never evaluates on images the
optimizer was meta-trained on. Each task's images are split 70/30 into train/test.

Methods: `sgd`, `adam`, `ewc` (online EWC on Adam), `lwf` (distillation to the model at task
start, on Adam), `replay` (reservoir buffer, on Adam), `learned` (the LearnedOptimizer, with
`consolidate()` at task ends). R[i, j] = test accuracy on task j after task i; metrics from
`metacl.benchmarks.cl_metrics`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacl.benchmarks.cl_metrics import cl_summary
from metacl.errors import MetaclError

SPLIT_PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
POOL_SEED = 12345
METHODS = ("sgd", "adam", "ewc", "lwf", "replay", "learned")
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


@dataclass
class RunConfig:
    steps_per_task: int = 40
    batch_size: int = 32
    sgd_lr: float = 0.1
    adam_lr: float = 3e-3
    ewc_lambda: float = 100.0
    lwf_alpha: float = 1.0
    lwf_temperature: float = 2.0
    replay_size: int = 200
    optimizer_path: str | None = None  # learned: None = shipped default weights
    learned_lr: float = 1.0
    extra: dict = field(default_factory=dict)


def _make_optimizer(method: str, model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    if method == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.sgd_lr)
    if method == "learned":
        from metacl.optim import LearnedOptimizer

        kw = dict(lr=cfg.learned_lr, total_steps=cfg.steps_per_task)
        if cfg.optimizer_path:
            return LearnedOptimizer.from_pretrained(cfg.optimizer_path, model.parameters(), **kw)
        return LearnedOptimizer.pretrained(model.parameters(), **kw)
    return torch.optim.Adam(model.parameters(), lr=cfg.adam_lr)


def run_sequence(tasks: list[Task], method: str, arch: str = "mlp", seed: int = 0, cfg: RunConfig | None = None,
                 on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train `method` through `tasks` in order; returns R, the random-init baseline and ACC/BWT/FWT.

    `on_step(global_step, loss)` sees every training loss (used for loss-curve plots).
    """
    if method not in METHODS:
        raise MetaclError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    cfg = cfg or RunConfig()
    model = make_model(arch, seed)
    opt = _make_optimizer(method, model, cfg)
    g = torch.Generator().manual_seed(seed + 1)
    baseline = [accuracy(model, t) for t in tasks]
    T = len(tasks)
    R = [[0.0] * T for _ in range(T)]
    fisher: dict[str, Tensor] = {}
    anchor: dict[str, Tensor] = {}
    old_model: nn.Module | None = None
    buf_x, buf_y, buf_m, seen = [], [], [], 0
    step = 0
    for i, task in enumerate(tasks):
        tmask = task.mask()
        for x, y in batches(task, cfg.steps_per_task, cfg.batch_size, g):
            bmask = None if tmask is None else tmask.expand(len(y), 10)
            if method == "replay" and buf_x:
                ridx = torch.randint(0, len(buf_x), (min(cfg.batch_size, len(buf_x)),), generator=g)
                x = torch.cat([x, torch.stack([buf_x[j] for j in ridx])])
                y = torch.cat([y, torch.stack([buf_y[j] for j in ridx])])
                rm = torch.stack([buf_m[j] for j in ridx])
                bmask = torch.cat([bmask if bmask is not None else torch.ones(len(y) - len(ridx), 10, dtype=torch.bool), rm])
            logits = model(x)
            loss = F.cross_entropy(masked_logits(logits, bmask), y)
            total = loss
            if method == "ewc" and fisher:
                total = total + cfg.ewc_lambda / 2 * sum(
                    (fisher[n] * (p - anchor[n]).pow(2)).sum() for n, p in model.named_parameters()
                )
            if method == "lwf" and old_model is not None:
                Tt = cfg.lwf_temperature
                with torch.no_grad():
                    old = F.log_softmax(old_model(x) / Tt, -1)
                new = F.log_softmax(logits / Tt, -1)
                total = total + cfg.lwf_alpha * Tt * Tt * F.kl_div(new, old, log_target=True, reduction="batchmean")
            opt.zero_grad()
            total.backward()
            opt.step()
            if on_step is not None:
                on_step(step, float(loss))
            step += 1
        # end of task: method-specific consolidation
        if method == "learned":
            opt.consolidate()
        if method == "ewc":
            newf = _empirical_fisher(model, task)
            fisher = {n: fisher.get(n, 0) + f for n, f in newf.items()}
            anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
        if method == "lwf":
            old_model = copy.deepcopy(model).eval()
        if method == "replay":
            m = tmask if tmask is not None else torch.ones(10, dtype=torch.bool)
            for xx, yy in zip(task.x_train, task.y_train):  # reservoir sampling over all seen examples
                seen += 1
                if len(buf_x) < cfg.replay_size:
                    buf_x.append(xx); buf_y.append(yy); buf_m.append(m)
                else:
                    j = int(torch.randint(0, seen, (1,), generator=g))
                    if j < cfg.replay_size:
                        buf_x[j], buf_y[j], buf_m[j] = xx, yy, m
        for j, t in enumerate(tasks):
            R[i][j] = accuracy(model, t)
    return {"R": R, "baseline": baseline, **cl_summary(R, baseline)}


def _empirical_fisher(model: nn.Module, task: Task) -> dict[str, Tensor]:
    """Diagonal empirical Fisher on the task's training set (mean of per-example squared grads)."""
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    mask = task.mask()
    n = min(len(task.y_train), 200)
    for k in range(n):
        model.zero_grad()
        out = masked_logits(model(task.x_train[k : k + 1]), mask)
        F.cross_entropy(out, task.y_train[k : k + 1]).backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                fisher[name] += p.grad.detach().pow(2) / n
    model.zero_grad()
    return fisher
