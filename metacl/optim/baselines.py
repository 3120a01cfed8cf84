"""Fixed-optimizer baselines for the learned optimizer's meta-training families, tuned honestly.

Why: a learned optimizer is only worth its cost if it beats a *tuned* AdamW, not one with a
deliberately bad step size. `tune_adamw` picks AdamW's lr over a grid on *validation* episodes
(a seed stream disjoint from meta-training and from the test episodes of `meta_train.evaluate`);
`adamw_parts` scores one lr on any seed stream, the same way `evaluate` scores its `adam` row.
"""

from __future__ import annotations

import random
from dataclasses import replace

from metacl.engine import adamw


def _stream(seed: int) -> random.Random:
    return random.Random(10_000_019 + seed)  # the stream `meta_train.evaluate` uses for `seed`


def adamw_parts(cfg, lr: float, episodes: int, seed: int, pool: str = "meta") -> dict:
    """Mean meta-loss parts of AdamW at `lr` on `episodes` episodes of `cfg.family` (stream `seed`)."""
    from metacl.optim.meta_train import FAMILIES, episode_loss

    c = replace(cfg, plasticity=0.0)  # the plasticity term compares with AdamW itself: not part of its score
    rng = _stream(seed)
    tot = {"meta_loss": 0.0, "learn": 0.0, "retain": 0.0}
    for _ in range(episodes):
        ep = FAMILIES[cfg.family](rng, c, pool)
        L, parts = episode_loss(ep, adamw(lr=lr), c, differentiable=False)
        tot["meta_loss"] += float(L)
        tot["learn"] += parts["learn"]
        tot["retain"] += parts["retain"]
    return {k: v / episodes for k, v in tot.items()}


def tune_adamw(cfg, lrs: tuple[float, ...] | list[float], episodes: int, seed: int) -> tuple[float, dict[float, dict]]:
    """AdamW's lr with the lowest mean meta-loss on validation episodes (stream `seed`), and every lr's parts.

    Use a `seed` whose stream is not the one the result is reported on (the test episodes).
    """
    if len(lrs) < 1:
        raise ValueError("tune_adamw needs at least one lr")
    table = {float(lr): adamw_parts(cfg, float(lr), episodes, seed) for lr in lrs}
    best = min(table, key=lambda lr: table[lr]["meta_loss"])
    return best, table
