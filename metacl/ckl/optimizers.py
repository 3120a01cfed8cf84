"""The optimizer factory behind `--optimizer adamw|sgd|learned`.

Why a factory: the loop builds the optimizer only after the strategies' `before_task` (LoRA
swaps the trainable parameters), so it needs a recipe, not an instance. The learned optimizer
lives in `metacl.optim` (a lower layer) and is imported only when asked for.
"""

from __future__ import annotations

from typing import Iterable

import torch

from metacl.errors import MetaclError

OPTIMIZERS = ("adamw", "sgd", "learned")


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                    path: str | None = None, total_steps: int | None = None,
                    learned_lr: float = 1.0, learned_anchor_lr: float | None = None,
                    learned_pull_scale: float | None = None) -> torch.optim.Optimizer:
    """An optimizer over `params`.

    `lr` is the step size of AdamW/SGD. The learned optimizer predicts its own step size, so it
    ignores `lr` and takes `learned_lr` (a multiplier on its step, 1.0 = as meta-trained);
    `path` selects its weights (default: the weights shipped with metacl); `learned_anchor_lr`, if
    given, applies its pull back to the starting weights at that multiplier instead of `learned_lr`
    (`LearnedOptimizer(anchor_lr=...)`); `learned_pull_scale` scales an importance-weighted pull
    (`LearnedOptimizer(pull_scale=...)`, weights meta-trained with `imp_pull`).
    """
    params = list(params)
    if lr <= 0 and name != "learned":
        raise MetaclError(f"--lr must be positive, got {lr}; pass e.g. --lr 1e-4")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "learned":
        from metacl.optim.learned import load_optimizer  # lazily: adamw/sgd runs never import the learned optimizer
        kwargs = {"lr": learned_lr}
        if learned_anchor_lr is not None:
            kwargs["anchor_lr"] = float(learned_anchor_lr)
        if learned_pull_scale is not None:
            kwargs["pull_scale"] = float(learned_pull_scale)
        if total_steps:
            kwargs["total_steps"] = int(total_steps)
        return load_optimizer(path, params, **kwargs)  # a folder, a shipped name (`digits`) or None = the default
    raise MetaclError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
