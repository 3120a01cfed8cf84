"""`run_tasks`: learn a stream of tasks in one model, with every strategy's hooks. The one task loop.

Why one runner: `ckl run` (LAMA-ckl: one task, probed every epoch) and `ckl sequence` (P world
updates, probed after each) differ only in how many tasks there are and when they probe. Both
go through here, so both get the same optimizer factory (`--optimizer adamw|sgd|learned`),
precision (`--precision bf16`), mid-task checkpoints with SIGKILL-safe resume (`--ckpt-every`),
NaN/inf limits (`--max-bad-steps`) and torchrun data parallelism; the callers keep only what
they score and what they write.

For one seed:

    seed everything; load the base LM; build the strategies (once for the whole stream)
    [probe: epoch 0]                                   (probe="epoch")
    for task i:  ctx.train_docs = the task's documents
        train_task: before_task, E epochs of batches, [probe after each epoch], after_task
        [probe: end of task i]                         (probe="task")
        ctx.seen_docs += the task's documents

A strategy that never trains (in-context learning) keeps every document seen so far as its
memory (`ctx.train_docs` = all earlier tasks' documents + this task's).

Resume: a checkpoint (written through `save(tensors, state)`, see `metacl.ckl.train`) carries
the index of the task in progress. `resume=(tensors, state)` retrains the finished tasks of the
stream without probing them (the caller stored their scores; training is deterministic given
the seed, and probing draws no random numbers, so the model, the strategies' cross-task state
and every RNG reach the start of the interrupted task exactly as before), then continues the
interrupted task from its checkpointed batch. Why retrain rather than store the finished
tasks: strategies keep arbitrary state between tasks (Fisher matrices, memories, adapter
columns) that only `before_task`/`after_task` know how to build; recomputing it is exact for
all 21 of them. A one-task stream (`ckl run`) retrains nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from metacl import distributed as D
from metacl.ckl.optimizers import build_optimizer
from metacl.ckl.train import train_task
from metacl.strategies.base import Strategy, TrainContext, get_strategy
from metacl.utils import seed_everything


@dataclass
class Probe:
    """Where a probe happens: `task` index, `epoch` (0 = before training, -1 = end of the task), `stats`."""

    task: int
    epoch: int
    stats: dict[str, Any]


def build_strategies(names: Sequence[str], options: dict[str, Any]) -> list[Strategy]:
    """Fresh strategy objects for `names` (composed in that order) from one options mapping."""
    out = [get_strategy(n).from_options(options) for n in names]
    for s in out:
        s.check_composition(out)
    return out


def optimizer_factory(cfg, ctx: TrainContext) -> Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]:
    """The recipe `train_task` calls after every `before_task` (LoRA swaps the parameters there)."""

    def make(params):
        opt = build_optimizer(cfg.optimizer, params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                              path=cfg.optimizer_path, total_steps=ctx.total_steps, learned_lr=cfg.learned_lr,
                              learned_anchor_lr=getattr(cfg, "learned_anchor_lr", None),
                              learned_pull_scale=getattr(cfg, "learned_pull_scale", None))
        n_prime = int(getattr(cfg, "learned_prime_docs", 0) or 0)
        if n_prime > 0 and hasattr(opt, "prime"):
            prime_on_old_corpus(opt, ctx, n_prime)
        return opt

    return make


def prime_on_old_corpus(opt, ctx: TrainContext, n_docs: int) -> int:
    """`LearnedOptimizer.prime` on `n_docs` old-corpus documents, in batches of the run's size.

    The documents are drawn with a generator of their own (seeded by the run's seed), so priming does
    not change the batch order the run would have without it.
    """
    from metacl.core.batching import doc_batches
    from metacl.errors import MetaclError
    from metacl.strategies.importance import mean_nll
    from metacl.strategies.memory import sample_indices

    if not ctx.old_corpus:
        raise MetaclError("--learned-prime-docs needs old text (the base LM's pre-training corpus); pass --old-corpus FILE")
    idx = sample_indices(len(ctx.old_corpus), min(n_docs, len(ctx.old_corpus)), torch.Generator().manual_seed(ctx.seed))
    batches = doc_batches(ctx.tokenizer, [ctx.old_corpus[i] for i in idx], ctx.batch_size, ctx.max_length, ctx.device)
    was = ctx.model.training
    ctx.model.eval()  # importance of the model as it is (no dropout noise)
    try:
        return opt.prime([lambda b=b: mean_nll(ctx.model, b) for b in batches])
    finally:
        ctx.model.train(was)


def run_tasks(
    cfg,
    names: Sequence[str],
    seed: int,
    tasks: Sequence[Sequence[str]],
    *,
    device: torch.device,
    old_corpus: Sequence[str],
    on_probe: Callable[[TrainContext, list[Strategy], Probe], None],
    probe: str = "epoch",
    save: Callable[[dict, dict], None] | None = None,
    ckpt_every: int | None = None,
    resume: tuple[dict, dict] | None = None,
    info=D.SINGLE,
    loader: Callable | None = None,
    strategies: list[Strategy] | None = None,
) -> dict[str, Any]:
    """Learn `tasks` (each a list of documents) in order for one seed.

    `cfg`: the run's options (model, strategy_options, epochs, optimizer, optimizer_path,
    learned_lr, lr, weight_decay, grad_clip, batch_size, max_length, precision, max_bad_steps,
    progress). `on_probe(ctx, strategies, Probe)` scores the model: with `probe="epoch"` at
    epoch 0 and after every epoch (inside the task, before `after_task`; a non-training stream
    is probed once, between `before_task` and `after_task`), with `probe="task"` after each
    whole task. Every rank calls it; rank 0 alone should score and write. An epoch probe that
    returns True ends the task after that epoch (early stopping; every rank must return the
    same answer, see `metacl.ckl.protocol`).

    `save(tensors, state)` is called every `ckpt_every` training steps (None = once per epoch,
    0 = never) with `state = {"task": i, "train": <train_task's state>}`. `resume`: see the
    module doc. Returns `{"losses": [per task: mean loss per epoch], "skipped_steps",
    "trains", "seconds"}`.

    `strategies`: fresh instances of `names` built by the caller (e.g. for its pre-flight
    checks; no hook may have run on them), used instead of building new ones. Safe because no
    strategy's constructor draws random numbers, so skipping it after seeding changes nothing.
    """
    if probe not in ("epoch", "task"):
        raise ValueError(f"probe must be 'epoch' or 'task', got {probe!r}")
    if loader is None:
        from metacl.models.loading import load_model_and_tokenizer as loader
    gen = seed_everything(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, tok = loader(cfg.model, device=device)
    if strategies is None:
        strategies = build_strategies(names, cfg.strategy_options)
    elif [s.name for s in strategies] != list(names):
        raise ValueError(f"strategies {[s.name for s in strategies]} do not match names {list(names)}")
    trains = any(s.trains for s in strategies)
    ctx = TrainContext(model=model, tokenizer=tok, device=device, train_docs=[], old_corpus=list(old_corpus),
                       batch_size=cfg.batch_size, max_length=cfg.max_length, seed=seed, generator=gen)
    precision = getattr(cfg, "precision", "fp32")
    first_task = int(resume[1].get("task", 0)) if resume is not None else 0
    # Fault injection for tests: after writing the checkpoint at this training step of the whole
    # stream (steps of finished tasks included), wait to be killed.
    pause_at = int(os.environ.get("METACL_DEBUG_PAUSE_AFTER_CKPT_STEP", "0") or 0)
    done_steps = 0
    losses: list[list[float]] = []
    skipped = 0
    t0 = time.time()

    if not trains:
        if probe == "epoch":  # in-context learning and other non-training methods: one evaluation
            ctx.train_docs = [d for t in tasks for d in t]
            for s in strategies:
                s.before_task(ctx)
            on_probe(ctx, strategies, Probe(0, 0, {"train_loss": None, "skipped_steps": 0}))
            for s in strategies:
                s.after_task(ctx)
            return {"losses": [], "skipped_steps": 0, "trains": False, "seconds": time.time() - t0}
        for i, docs in enumerate(tasks):  # a memory-only learner keeps every document seen so far
            ctx.task_index = i
            ctx.train_docs = list(ctx.seen_docs) + list(docs)
            for s in strategies:
                s.before_task(ctx)
            for s in strategies:
                s.after_task(ctx)
            on_probe(ctx, strategies, Probe(i, -1, {"train_loss": None, "skipped_steps": 0}))
            ctx.seen_docs = list(ctx.train_docs)
        return {"losses": [], "skipped_steps": 0, "trains": False, "seconds": time.time() - t0}

    if probe == "epoch" and resume is None:
        on_probe(ctx, strategies, Probe(0, 0, {"train_loss": None, "skipped_steps": 0}))
    for i, docs in enumerate(tasks):
        ctx.task_index = i
        ctx.train_docs = list(docs)
        replay = i < first_task  # finished before the checkpoint: retrain, do not probe or save

        def save_state(tensors: dict, state: dict, i=i) -> None:
            if save is not None and info.is_main:
                save(tensors, {"task": i, "train": state})
                if pause_at and done_steps + state["position"]["step"] == pause_at:
                    time.sleep(600)

        def epoch_probe(epoch: int, stats: dict, i=i) -> bool | None:
            return on_probe(ctx, strategies, Probe(i, epoch, stats))

        stats = train_task(
            ctx, strategies, cfg.epochs, optimizer_factory(cfg, ctx),
            on_epoch_end=epoch_probe if probe == "epoch" and not replay else None,
            grad_clip=cfg.grad_clip or None, progress=getattr(cfg, "progress", True) and info.is_main,
            ckpt_every=0 if (replay or save is None) else ckpt_every, save_state=save_state,
            resume=(resume[0], resume[1]["train"]) if (resume is not None and i == first_task) else None,
            max_bad_steps=getattr(cfg, "max_bad_steps", None), precision=precision, dist=info)
        done_steps += stats["steps"]
        skipped += stats["skipped_steps"]
        losses.append(stats["losses"])
        if probe == "task" and not replay:
            on_probe(ctx, strategies, Probe(i, -1, {"train_loss": stats["losses"][-1], "skipped_steps": skipped}))
        ctx.seen_docs = list(ctx.seen_docs) + list(ctx.train_docs)
    return {"losses": losses, "skipped_steps": skipped, "trains": True, "seconds": time.time() - t0}
