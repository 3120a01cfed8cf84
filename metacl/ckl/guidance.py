"""Guidance printed while a `ckl run` trains: a warning when the TL probes have not moved.

Why: with a learning rate made for large models (`--lr 1e-4`, the default) a small model learns
almost nothing in a few epochs (issue 17: TL 0.332 -> 0.327 in 2 epochs), and a user only found
out from the table at the end. After the first epochs (`CHECK_EPOCH`) the run compares TL
accuracy with epoch 0 and, when it has moved less than `MIN_MOVE`, says so on stderr with a
concrete next step. The run goes on: a strategy may be meant to move little.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

CHECK_EPOCH = 2          # epochs after which TL should have moved
MIN_MOVE = 0.01          # absolute change in TL accuracy below which it "has not moved"
SMALL_MODEL = 20_000_000  # parameters; metacl's `tiny` and `small` presets are far below (`base` is ~100M)


def stalled_message(rows: Sequence[dict], epoch: int, epochs: int, optimizer: str, lr: float,
                    n_params: int | None = None, seed: int | None = None) -> str | None:
    """The warning for `seed`'s rows after `epoch`, or None (not the check epoch, or TL moved).

    `rows` may hold every seed's rows (the run's metrics.jsonl, so a resumed seed still sees its
    epoch 0); only those of `seed` count when it is given."""
    if epoch != min(CHECK_EPOCH, epochs):
        return None
    by_epoch = {int(r["epoch"]): r for r in rows if seed is None or int(r.get("seed", seed)) == seed}
    if 0 not in by_epoch or epoch not in by_epoch:
        return None
    start, now = float(by_epoch[0]["tl_acc"]), float(by_epoch[epoch]["tl_acc"])
    if abs(now - start) >= MIN_MOVE:
        return None
    losses = [by_epoch[e].get("train_loss") for e in sorted(by_epoch) if e >= 1]
    losses = [x for x in losses if x is not None]
    loss = f", train loss {losses[0]:.3f} -> {losses[-1]:.3f}" if len(losses) >= 2 else \
        (f", train loss {losses[0]:.3f}" if losses else "")
    if optimizer == "learned":
        fix = "raise --learned-lr (e.g. 2) or train more epochs"
    elif n_params is not None and n_params < SMALL_MODEL and lr <= 3e-4:
        size = f"{n_params / 1e6:.1f}M" if n_params >= 1e6 else f"{n_params / 1e3:.0f}k"
        fix = (f"for a {size}-parameter model try --lr 1e-3 (what `metacl demo` uses for its "
               "small base LM), or train more epochs")
    else:
        fix = "raise --lr (e.g. x3) or train more epochs"
    return (f"TL accuracy moved {now - start:+.3f} in {epoch} epoch(s) ({start:.3f} -> {now:.3f}{loss}) with "
            f"--optimizer {optimizer}" + (f" --lr {lr:g}" if optimizer != "learned" else "")
            + f": the model is barely learning the new facts; {fix}")


def warn_if_stalled(rows: Sequence[dict], epoch: int, cfg: Any, model: Any = None, seed: int | None = None) -> None:
    """Print `stalled_message` as one `metacl: warning:` line on stderr when it applies."""
    n_params = sum(p.numel() for p in model.parameters()) if model is not None else None
    msg = stalled_message(rows, epoch, int(cfg.epochs), cfg.optimizer, float(cfg.lr), n_params, seed)
    if msg:
        where = f"seed {seed}: " if seed is not None else ""
        print(f"metacl: warning: {where}{msg}", file=sys.stderr, flush=True)
