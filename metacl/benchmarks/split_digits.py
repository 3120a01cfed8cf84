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
`metacl.core.cl_metrics`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacl.core.cl_metrics import cl_summary
from metacl.data.digits import (ARCHS, POOL_SEED, SPLIT_PAIRS, DigitsCNN, Task, accuracy, batches,  # noqa: F401
                                load_pool, make_benchmark, make_model, make_task, masked_logits)
from metacl.engine.losses import distill_kl
from metacl.errors import MetaclError
from metacl.strategies.anchor import QuadraticAnchor
from metacl.strategies.memory import Reservoir

METHODS = ("sgd", "adam", "ewc", "lwf", "replay", "learned")


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
    consolidate_decay: float = 1.0  # learned: old-task importance kept at each task end (LearnedOptimizer.consolidate)
    extra: dict = field(default_factory=dict)


def _make_optimizer(method: str, model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    if method == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.sgd_lr)
    if method == "learned":
        from metacl.optim import load_optimizer

        return load_optimizer(cfg.optimizer_path, model.parameters(), lr=cfg.learned_lr, total_steps=cfg.steps_per_task)
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
    prior = QuadraticAnchor(gamma=1.0)  # EWC: the Fisher and anchor of the LM strategy `ewc`
    old_model: nn.Module | None = None
    memory = Reservoir(cfg.replay_size, g) if method == "replay" else None  # the reservoir of the LM strategy `replay`
    step = 0
    for i, task in enumerate(tasks):
        tmask = task.mask()
        for x, y in batches(task, cfg.steps_per_task, cfg.batch_size, g):
            bmask = None if tmask is None else tmask.expand(len(y), 10)
            if method == "replay" and len(memory):
                buf = memory.items
                ridx = torch.randint(0, len(buf), (min(cfg.batch_size, len(buf)),), generator=g)
                x = torch.cat([x, torch.stack([buf[j][0] for j in ridx])])
                y = torch.cat([y, torch.stack([buf[j][1] for j in ridx])])
                rm = torch.stack([buf[j][2] for j in ridx])
                bmask = torch.cat([bmask if bmask is not None else torch.ones(len(y) - len(ridx), 10, dtype=torch.bool), rm])
            logits = model(x)
            loss = F.cross_entropy(masked_logits(logits, bmask), y)
            total = loss
            if method == "ewc" and not prior.empty:
                total = total + cfg.ewc_lambda * prior.penalty(model.named_parameters())  # as the LM strategy `ewc`
            if method == "lwf" and old_model is not None:
                with torch.no_grad():
                    old = old_model(x)
                total = total + cfg.lwf_alpha * distill_kl(old, logits, cfg.lwf_temperature)  # as the LM strategy `lwf`
            opt.zero_grad()
            total.backward()
            opt.step()
            if on_step is not None:
                on_step(step, float(loss))
            step += 1
        # end of task: method-specific consolidation
        if method == "learned":
            opt.consolidate(cfg.consolidate_decay)
        if method == "ewc":
            prior.consolidate(_empirical_fisher(model, task), model.named_parameters())
        if method == "lwf":
            old_model = copy.deepcopy(model).eval()
        if method == "replay":
            m = tmask if tmask is not None else torch.ones(10, dtype=torch.bool)
            memory.extend((xx, yy, m) for xx, yy in zip(task.x_train, task.y_train))  # over all seen examples
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
