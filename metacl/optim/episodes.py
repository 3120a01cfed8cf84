"""Optimizee families the learned optimizer is meta-trained on: an `Episode` is one sampled model and its tasks.

Kept apart from `meta_train` so families in other modules (`lm_family`) can build episodes
without importing the trainer that collects them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacl.data.digits import load_pool, make_model, make_task


DIGITS_KINDS = ("split", "class", "permuted")


# ----------------------------------------------------------------------------- optimizee families
@dataclass
class Episode:
    """A sampled optimizee: model (only its structure is used), initial params, and its tasks.

    Each task is (train batches for the inner loop, held-out batch for the meta-loss).
    `scales` (optional, one per task) is the loss of a chance-level predictor on that task, used
    by `normalize="log_classes"` so that 2-class and 10-class tasks weigh the same in the meta-loss.
    """

    model: nn.Module
    params: dict[str, Tensor]
    tasks: list[tuple[list[Any], Any]]
    loss_fn: Callable[[nn.Module, dict[str, Tensor], Any], Tensor]
    scales: list[float] | None = None
    tl_loss_fn: Callable[[nn.Module, dict[str, Tensor], Any], Tensor] | None = None  # new-task part of a held-out loss
    # mean |grad * p| on the optimizee's old data (pre-training), given to the learned optimizer's `prime` before
    # the first task; None = no priming (MetaTrainConfig.prime_batches = 0, or a family without old data)
    old_importance: dict[str, Tensor] | None = None


def _classifier_loss(model: nn.Module, params: dict[str, Tensor], batch) -> Tensor:
    x, y, mask = batch
    logits = torch.func.functional_call(model, params, (x,))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return F.cross_entropy(logits, y)


def digits_episode(rng: random.Random, cfg: MetaTrainConfig, pool: str = "meta") -> Episode:
    """MLP on digits; the episode's tasks are all of one kind, drawn from `cfg.kinds`:

    - split: 2-class tasks with masked heads (task-incremental, as the benchmark's `split-task`);
    - class: the same 2-class tasks on a shared 10-way head, no mask (class-incremental: the
      retention term then punishes pushing old classes' logits down, which only an optimizer that
      protects the old-class weights can avoid);
    - permuted: 10-class tasks, each a fresh pixel permutation.
    """
    x, y = load_pool(pool)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    model = make_model("mlp", seed=rng.randrange(2**31), hidden=rng.choice([32, 64]))
    kind = rng.choice(cfg.kind_list())
    n_tasks = cfg.n_tasks(rng)
    classes = list(range(10))
    rng.shuffle(classes)
    tasks, scales = [], []
    for i in range(n_tasks):
        if kind in ("split", "class"):
            c = tuple(sorted(classes[2 * (i % 5) : 2 * (i % 5) + 2]))
            t = make_task(x, y, c, None, g, masked=kind == "split")
        else:
            t = make_task(x, y, None, torch.randperm(64, generator=g), g)
        mask = t.mask()
        scales.append(math.log(2.0 if mask is not None else 10.0))
        bs = []
        for _ in range(cfg.inner_steps):
            idx = torch.randint(0, len(t.y_train), (cfg.batch_size,), generator=g)
            bs.append((t.x_train[idx], t.y_train[idx], mask))
        tasks.append((bs, (t.x_test, t.y_test, mask)))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    return Episode(model, params, tasks, _classifier_loss, scales)


def _mse_loss(model: nn.Module, params: dict[str, Tensor], batch) -> Tensor:
    x, y = batch
    return (torch.func.functional_call(model, params, (x,)) - y).pow(2).mean()


def toy_episode(rng: random.Random, cfg: MetaTrainConfig, pool: str = "meta") -> Episode:
    """Linear regression (8 -> 1), one random teacher per episode; task i only excites inputs
    2i, 2i+1 (mod 8), so tasks are compatible and both learning and retention reward good steps.
    Cheap: used by the tests."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    torch.manual_seed(rng.randrange(2**31))
    model = nn.Linear(8, 1)
    w = torch.randn(8, 1, generator=g)
    tasks = []
    for i in range(cfg.tasks_per_episode):
        support = torch.zeros(8)
        support[[(2 * i) % 8, (2 * i + 1) % 8]] = 1.0
        def data(n, support=support):
            xx = torch.randn(n, 8, generator=g) * support
            return xx, xx @ w + 0.1 * torch.randn(n, 1, generator=g)
        tasks.append(([data(cfg.batch_size) for _ in range(cfg.inner_steps)], data(64)))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    return Episode(model, params, tasks, _mse_loss)
