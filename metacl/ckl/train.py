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
batch neither poisons the weights nor silently disappears from the report; so is a step whose
gradients are non-finite after backward. `max_bad_steps` turns a run that keeps producing such
steps into one clear error instead of a long run that learns nothing.

Resume: with `ckpt_every` and `save_state`, the loop hands over its complete position every N
steps (`capture_state`): trainable weights, optimizer state, each strategy's `state_dict()`,
python/torch/`ctx.generator` RNG states, the epoch, the index of the next batch and the batch
order of the epoch in progress, the running loss sums and the skipped-step count. `resume=`
puts all of that back after the strategies' `before_task` ran on the fresh base model (what
`before_task` computes from that model -- Fisher matrices, snapshots, LoRA wrappers -- is
recomputed identically, so it is not stored), and the loop continues with the next batch as
if it had never stopped. Strategies whose state changes *during* a task and is therefore in
their `state_dict()`: recadam (annealing step t), agem (projection counters), tasl (last merge
decision), oracle (missed-object counter). The others (finetune, lora, olora, k_adapter,
progressive, ewc, ncl, lwf, rho1, spg, das, osft, replay, mix_review, taalm, random, icl) only
build state in `before_task`/`after_task`, keep per-step scratch that is reset every step
(spg/das/osft weight snapshots), or draw from `ctx.generator`, whose state is saved.

Data parallel (`dist=` a `metacl.distributed.DistInfo` with several ranks): every rank builds
the same global batch (the same generator draws, the same `train_batch` hooks), takes a
contiguous share of its rows, and normalises its token-weighted NLL by the token weight of the
*whole* batch, so averaging the gradients over ranks gives exactly the single-process gradient
(extra losses are averaged over ranks: exact for penalties that do not depend on the batch,
such as EWC's, an average over shares for batch-dependent ones such as LwF's).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from metacl.checkpoint import flatten_state, generator_state, set_generator_state, unflatten_state
from metacl.core.batching import DocBatches
from metacl.engine.losses import label_mask as engine_label_mask, nll_from_logits
from metacl.errors import MetaclError
from metacl.precision import autocast
from metacl.rng import all_rng_state, set_all_rng_state
from metacl.core.batching import Batch
from metacl.strategies.base import Strategy, TrainContext


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


class TooManyBadSteps(MetaclError):
    """The run produced more non-finite steps than `--max-bad-steps` allows."""


def loss_terms(strategies: Sequence[Strategy], ctx: TrainContext, batch: Batch,
               precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(sum of weighted NLL, sum of weights, sum of extra losses or None) for one batch on the device.

    The second term is the number of label tokens instead when a strategy asks for unnormalised
    weights (`token_weight_norm == "tokens"`).

    Kept as parts so data-parallel ranks can divide by the weight of the whole global batch.
    """
    with autocast(precision, ctx.device):
        logits = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits.float()  # the loss itself always in fp32 (a no-op without autocast)
    nll = nll_from_logits(logits, batch["labels"])
    w = combined_weights(strategies, ctx, batch, nll)
    ctx.token_weights = w.detach()  # what extra_loss hooks may read (lwf --lwf-tokens complement)
    extra = None
    for s in strategies:
        e = s.extra_loss(ctx, batch, logits)
        if e is not None:
            extra = e if extra is None else extra + e
    den = label_mask(batch["labels"]).sum() if any(s.token_weight_norm == "tokens" for s in strategies) else w.sum()
    return (w * nll).sum(), den, extra


def step_loss(strategies: Sequence[Strategy], ctx: TrainContext, batch: Batch, precision: str = "fp32") -> torch.Tensor:
    """Weighted NLL plus every extra loss, for one batch already on the device."""
    num, den, extra = loss_terms(strategies, ctx, batch, precision)
    loss = num / den.clamp_min(1e-8)
    return loss if extra is None else loss + extra


def _rows_of_rank(n: int, dist) -> slice:
    """This rank's contiguous share of `n` rows (shares differ by at most one; some may be empty)."""
    per, extra = divmod(n, dist.world_size)
    start = dist.rank * per + min(dist.rank, extra)
    return slice(start, start + per + (1 if dist.rank < extra else 0))


def _grads_finite(params: Sequence[torch.nn.Parameter]) -> bool:
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


def capture_state(ctx: TrainContext, strategies: Sequence[Strategy], pos: dict[str, Any]) -> tuple[dict, dict]:
    """(tensors, JSON state) holding everything needed to continue training from here."""
    tensors: dict[str, torch.Tensor] = {f"model/{n}": p for n, p in ctx.trainable()}
    gen = generator_state(ctx.generator)
    if gen is not None:
        tensors["rng/generator"] = gen
    state = {
        "position": pos,
        "rng": all_rng_state(),  # python, torch, numpy and (dropout on a GPU) CUDA streams
        "optimizer": flatten_state(ctx.optimizer.state_dict(), "optimizer", tensors),
        "strategies": [{"name": s.name, "state": flatten_state(s.state_dict(), f"strategy{i}", tensors)}
                       for i, s in enumerate(strategies)],
        "last_loss": ctx.last_loss,
    }
    return tensors, state


def restore_state(ctx: TrainContext, strategies: Sequence[Strategy], tensors: dict, state: dict) -> dict[str, Any]:
    """Inverse of `capture_state` (after `before_task` and the optimizer are set up); returns the position."""
    names = [s.name for s in strategies]
    stored = [d["name"] for d in state["strategies"]]
    if stored != names:
        raise MetaclError(f"checkpoint was written for strategies {stored}, this run has {names}; "
                          "delete OUT/checkpoint or rerun with the original --strategy")
    trainable = dict(ctx.trainable())
    saved = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    if set(saved) != set(trainable):
        missing = sorted(set(trainable) ^ set(saved))[:3]
        raise MetaclError(f"checkpoint's trainable tensors differ from this run's (e.g. {missing}); "
                          "it belongs to another model or strategy: delete OUT/checkpoint")
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(saved[n].to(p.device, p.dtype))
    ctx.optimizer.load_state_dict(unflatten_state(state["optimizer"], tensors))
    for s, d in zip(strategies, state["strategies"]):
        s.load_state_dict(unflatten_state(d["state"], tensors))
    set_all_rng_state(state["rng"])
    set_generator_state(ctx.generator, tensors.get("rng/generator"))
    ctx.last_loss = float(state.get("last_loss", float("nan")))
    return state["position"]


def train_task(
    ctx: TrainContext,
    strategies: Sequence[Strategy],
    epochs: int,
    make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    on_epoch_end: Callable[[int, dict], None] | None = None,
    grad_clip: float | None = 1.0,
    progress: bool = True,
    *,
    ckpt_every: int | None = 0,
    save_state: Callable[[dict, dict], None] | None = None,
    resume: tuple[dict, dict] | None = None,
    max_bad_steps: int | None = None,
    precision: str = "fp32",
    dist=None,
) -> dict:
    """Learn `ctx.train_docs` for `epochs` epochs; `on_epoch_end(epoch, stats)` runs after each
    epoch's `after_epoch` hooks (epochs count from 1; the caller evaluates there). When it returns
    True the task ends after that epoch (early stopping: `after_task` still runs, and the
    returned `stopped_epoch` says where; None when every epoch ran).

    `save_state(tensors, state)` is called every `ckpt_every` steps (None: once per epoch) with
    `capture_state`'s output; `resume=(tensors, state)` continues from such a state. `max_bad_steps` (None or 0 =
    no limit) raises `TooManyBadSteps` once that many steps were skipped as non-finite.
    `precision`: "fp32" or "bf16" (autocast around the forward). `dist`: see the module doc.

    Returns `{"steps", "skipped_steps", "losses" (mean per epoch), "stopped_epoch"}`.
    """
    if epochs < 1:
        raise MetaclError(f"epochs must be >= 1, got {epochs}; pass e.g. --epochs 30")
    distributed = dist is not None and dist.enabled
    if distributed:
        from metacl import distributed as D
    ctx.reset_reference()
    for s in strategies:
        s.before_task(ctx)
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    if not params:
        raise MetaclError("no trainable parameters after the strategies' setup; a training strategy must leave some "
                          "parameters with requires_grad=True")
    if distributed:  # identical start on every rank, whatever each rank's setup drew
        D.broadcast_(params, dist)
    batches = DocBatches(ctx.tokenizer, ctx.train_docs, ctx.batch_size, ctx.max_length, ctx.generator)
    ctx.total_steps = epochs * len(batches)
    if ckpt_every is None:  # once per epoch
        ckpt_every = len(batches)
    ctx.optimizer = make_optimizer(params)  # may read ctx.total_steps (schedules, learned optimizer)
    ctx.step = 0
    skipped = 0
    epoch_losses: list[float] = []
    start_epoch, start_batch, order, total, count = 1, 0, None, 0.0, 0
    if resume is not None:
        pos = restore_state(ctx, strategies, *resume)
        start_epoch, start_batch, order = int(pos["epoch"]), int(pos["batch"]), pos["order"]
        ctx.step, skipped, total, count = int(pos["step"]), int(pos["skipped"]), float(pos["total"]), int(pos["count"])
        epoch_losses = [float(x) for x in pos["epoch_losses"]]
    bar = tqdm(total=ctx.total_steps, initial=ctx.step, desc=f"train task {ctx.task_index}",
               disable=None if progress else True, leave=False)

    def give_up(epoch: int, b: int) -> None:
        if max_bad_steps and skipped >= max_bad_steps:
            raise TooManyBadSteps(
                f"seed {ctx.seed} epoch {epoch} step {ctx.step} (batch {b + 1}/{len(batches)}): {skipped} non-finite steps "
                f"(NaN/inf loss or gradients) reached --max-bad-steps {max_bad_steps}; lower --lr, check the training "
                "data, or raise --max-bad-steps")

    ctx.model.train()
    stopped_epoch = None
    for epoch in range(start_epoch, epochs + 1):
        ctx.epoch = epoch
        if epoch != start_epoch or order is None:
            order, total, count = batches.epoch_order(), 0.0, 0
        for b in range(start_batch if epoch == start_epoch else 0, len(batches)):
            batch = batches.batch_at(order, b)
            for s in strategies:
                batch = s.train_batch(ctx, batch)
            if distributed:
                batch = {k: v[_rows_of_rank(batch["input_ids"].shape[0], dist)] for k, v in batch.items()}
            batch = {k: v.to(ctx.device) for k, v in batch.items()}
            value, ok = _forward_backward(strategies, ctx, batch, params, precision, dist if distributed else None)
            if ok:
                if distributed:
                    D.all_reduce_mean_([p.grad for p in params], dist)
                ok = _grads_finite(params)
                if distributed:
                    ok = not D.all_reduce_flag(not ok, dist)
            if not ok:
                skipped += 1
                ctx.optimizer.zero_grad(set_to_none=True)
                ctx.step += 1
                bar.update(1)
                give_up(epoch, b)
            else:
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
            if save_state is not None and ckpt_every and ctx.step % ckpt_every == 0:
                pos = {"epoch": epoch, "batch": b + 1, "order": order, "step": ctx.step, "skipped": skipped,
                       "total": total, "count": count, "epoch_losses": epoch_losses}
                save_state(*capture_state(ctx, strategies, pos))
        for s in strategies:
            s.after_epoch(ctx)
        epoch_losses.append(total / count if count else float("nan"))
        if on_epoch_end is not None:
            stop = on_epoch_end(epoch, {"train_loss": epoch_losses[-1], "skipped_steps": skipped})
            ctx.model.train()
            if stop is True:  # the caller's early stop (`ckl run --patience`): no more epochs
                stopped_epoch = epoch
                break
    bar.close()
    for s in strategies:
        s.after_task(ctx)
    ctx.model.eval()
    return {"steps": ctx.step, "skipped_steps": skipped, "losses": epoch_losses, "stopped_epoch": stopped_epoch}


def _forward_backward(strategies, ctx, batch, params, precision, dist) -> tuple[float, bool]:
    """Loss value of the (global) batch and whether it was finite; gradients are left in `.grad`.

    With `dist`, this rank's share of the NLL is divided by the global token weight and
    multiplied by the number of ranks, so the mean over ranks is the single-process loss.
    """
    if dist is None:
        loss = step_loss(strategies, ctx, batch, precision)
        value = float(loss.detach())
        if not math.isfinite(value):
            return value, False
        loss.backward()
        return value, True
    from metacl import distributed as D

    if batch["input_ids"].shape[0] == 0:  # more ranks than rows in this batch: contribute nothing
        num = den = torch.zeros((), device=ctx.device)
        extra, loss = None, None
    else:
        num, den, extra = loss_terms(strategies, ctx, batch, precision)
    den_global = den.detach().reshape(1).clone()
    D.all_reduce_mean_([den_global], dist)
    den_global = (den_global * dist.world_size).clamp_min(1e-8)[0]
    if batch["input_ids"].shape[0] > 0:
        loss = num * dist.world_size / den_global
        loss = loss if extra is None else loss + extra
    v = (loss.detach() if loss is not None else torch.zeros((), device=ctx.device)).reshape(1).clone()
    bad = D.all_reduce_flag(not bool(torch.isfinite(v).all()), dist)
    D.all_reduce_mean_([v], dist)
    if bad:
        return float("nan"), False
    if loss is not None:
        loss.backward()
    for p in params:  # every rank must all-reduce the same tensors
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return float(v[0]), True
