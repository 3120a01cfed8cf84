"""The training loop that runs strategies' hooks (see `metacl.strategies.base` for the order).

One call of `train_task` learns one task's documents for some epochs. Composition rules, the
reason strategies can be stacked (`--strategy taalm recadam`):

- `train_batch` hooks run in the order given, each seeing the previous one's batch;
- `token_weights` multiply (starting from the label mask, so padding never counts);
- `extra_loss` terms add;
- `before_step` / `after_step` / `after_epoch` / `after_task` run in order.

The optimizer is built *after* every `before_task`, over the parameters that then have
`requires_grad=True`: LoRA and adapters replace or freeze parts of the model there. A step
whose loss is NaN or infinite is skipped (no update, gradients dropped) and counted, so one bad
batch neither poisons the weights nor silently disappears from the report.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from metacl.ckl.batching import DocBatches
from metacl.engine.losses import label_mask as engine_label_mask, nll_from_logits
from metacl.errors import MetaclError
from metacl.strategies.base import Batch, Strategy, TrainContext


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) next-token NLL aligned with `labels` (column t scores token t); 0 where ignored."""
    return nll_from_logits(logits, labels)


def label_mask(labels: torch.Tensor) -> torch.Tensor:
    return engine_label_mask({"labels": labels})


def combined_weights(strategies: Sequence[Strategy], ctx: TrainContext, batch: Batch, nll: torch.Tensor) -> torch.Tensor:
    """The label mask times every strategy's token weights (None = leave alone)."""
    w = label_mask(batch["labels"])
    for s in strategies:
        tw = s.token_weights(ctx, batch, nll.detach())
        if tw is not None:
            if tw.shape != w.shape:
                raise ValueError(f"strategy {s.name} returned token weights of shape {tuple(tw.shape)}, expected {tuple(w.shape)}")
            w = w * tw.to(w.device, w.dtype)
    return w


def step_loss(strategies: Sequence[Strategy], ctx: TrainContext, batch: Batch) -> torch.Tensor:
    """Weighted NLL plus every extra loss, for one batch already on the device."""
    logits = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll = token_nll(logits, batch["labels"])
    w = combined_weights(strategies, ctx, batch, nll)
    loss = (w * nll).sum() / w.sum().clamp_min(1e-8)
    for s in strategies:
        extra = s.extra_loss(ctx, batch, logits)
        if extra is not None:
            loss = loss + extra
    return loss


def train_task(
    ctx: TrainContext,
    strategies: Sequence[Strategy],
    epochs: int,
    make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    on_epoch_end: Callable[[int, dict], None] | None = None,
    grad_clip: float | None = 1.0,
    progress: bool = True,
) -> dict:
    """Learn `ctx.train_docs` for `epochs` epochs; `on_epoch_end(epoch, stats)` runs after each
    epoch's `after_epoch` hooks (epochs count from 1; the caller evaluates there).

    Returns `{"steps", "skipped_steps", "losses" (mean per epoch)}`.
    """
    if epochs < 1:
        raise MetaclError(f"epochs must be >= 1, got {epochs}; pass e.g. --epochs 30")
    ctx.reset_reference()
    for s in strategies:
        s.before_task(ctx)
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    if not params:
        raise MetaclError("no trainable parameters after the strategies' setup; a training strategy must leave some "
                          "parameters with requires_grad=True")
    batches = DocBatches(ctx.tokenizer, ctx.train_docs, ctx.batch_size, ctx.max_length, ctx.generator)
    ctx.total_steps = epochs * len(batches)
    ctx.optimizer = make_optimizer(params)  # may read ctx.total_steps (schedules, learned optimizer)
    ctx.step = 0
    skipped = 0
    epoch_losses: list[float] = []
    bar = tqdm(total=ctx.total_steps, desc=f"train task {ctx.task_index}", disable=None if progress else True, leave=False)
    ctx.model.train()
    for epoch in range(1, epochs + 1):
        ctx.epoch = epoch
        total, count = 0.0, 0
        for batch in batches:
            for s in strategies:
                batch = s.train_batch(ctx, batch)
            batch = {k: v.to(ctx.device) for k, v in batch.items()}
            loss = step_loss(strategies, ctx, batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                skipped += 1
                ctx.optimizer.zero_grad(set_to_none=True)
                ctx.step += 1
                bar.update(1)
                continue
            loss.backward()
            for s in strategies:
                s.before_step(ctx)
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            ctx.optimizer.step()
            ctx.optimizer.zero_grad(set_to_none=True)
            for s in strategies:
                s.after_step(ctx)
            ctx.last_loss = value
            ctx.step += 1
            total, count = total + value, count + 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{value:.3f}")
        for s in strategies:
            s.after_epoch(ctx)
        epoch_losses.append(total / count if count else float("nan"))
        if on_epoch_end is not None:
            on_epoch_end(epoch, {"train_loss": epoch_losses[-1], "skipped_steps": skipped})
            ctx.model.train()
    bar.close()
    for s in strategies:
        s.after_task(ctx)
    ctx.model.eval()
    return {"steps": ctx.step, "skipped_steps": skipped, "losses": epoch_losses}
