"""The one recipe shape of a meta-learner, and the one loop that trains any of them.

Why: metacl meta-trains two different things (the token-importance predictor in `metacl.meta`,
the learned optimizer in `metacl.optim`), and both need the same machinery around their
meta-gradient: a step counter, skipped non-finite steps and a limit on them, a metrics log,
periodic validation, crash-safe checkpoints with a resume that continues bit for bit, rank 0
writing under torchrun, and finally the artefact a user deploys. `MetaLearner` is what a
meta-learner provides; `meta_train` is everything else, written once.

A meta-learner implements:

    setup()                    build fresh state (weights, outer optimizer) -- already done by __init__ is fine
    meta_step() -> row         one outer update on the step's global meta-batch; increments `step`.
                               row: metrics for the log; `skipped=True` + `reason` when the update was skipped
    evaluate() -> dict | None  validate the current meta-parameters (None: nothing to validate)
    state_dict() -> (tensors, state)   everything a resumed run needs (tensors: safetensors; state: JSON)
    load_state_dict(tensors, state)    put that back; refuse (CheckpointError) a checkpoint of other settings
    deploy() -> summary        write what users load (predictor folder, optimizer weights) and the summary

plus attributes `out` (run folder), `step`, `bad_steps`, `dist` (a `metacl.distributed.DistInfo`).

Checkpoint format (both meta-learners): `OUT/checkpoint/` written by `metacl.checkpoint.save_checkpoint`
(safetensors + JSON, atomically), JSON = `{"step", "bad_steps", "learner": <name>, **state}`.

Adding a third meta-learner: one new folder `metacl/<name>/` with a class implementing the
protocol and a `metacl/cli/meta_<name>.py` that builds it and calls `meta_train` (see
docs/architecture.md for a short example).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from metacl.errors import MetaclError

CKPT_DIR = "checkpoint"
METRICS = "metrics.jsonl"


@runtime_checkable
class MetaLearner(Protocol):
    name: str
    out: Path
    step: int
    bad_steps: int
    dist: Any

    def setup(self) -> None: ...
    def meta_step(self) -> dict[str, Any]: ...
    def evaluate(self) -> dict[str, Any] | None: ...
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...
    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None: ...
    def deploy(self) -> dict[str, Any]: ...


def save(learner: MetaLearner) -> None:
    """Write `OUT/checkpoint` (rank 0 only; every rank holds the same state)."""
    from metacl.checkpoint import save_checkpoint

    if not learner.dist.is_main:
        return
    tensors, state = learner.state_dict()
    save_checkpoint(Path(learner.out) / CKPT_DIR, tensors,
                    {**state, "step": learner.step, "bad_steps": learner.bad_steps, "learner": learner.name})


def resume(learner: MetaLearner) -> bool:
    """Load `OUT/checkpoint` into `learner` if there is one (also one left aside by a killed write);
    drop log rows written after it. True if resumed."""
    from metacl.checkpoint import find_checkpoint, load_checkpoint
    from metacl.errors import CheckpointError
    from metacl.utils import truncate_jsonl

    ckpt = Path(learner.out) / CKPT_DIR
    if find_checkpoint(ckpt) is None:
        return False
    tensors, state = load_checkpoint(ckpt)
    if state.get("learner", learner.name) != learner.name:
        raise CheckpointError(f"{ckpt} belongs to a {state['learner']} run, not {learner.name}; choose another --out")
    learner.load_state_dict(tensors, state)
    learner.step = int(state["step"])
    learner.bad_steps = int(state.get("bad_steps", 0))
    log = Path(learner.out) / METRICS
    if log.exists() and learner.dist.is_main:  # a crash between checkpoint and log, or a partial last line
        truncate_jsonl(log, learner.step)
    return True


def meta_train(learner: MetaLearner, steps: int, *, ckpt_every: int, val_every: int = 0, val_at_start: bool = False,
               max_bad_steps: int = 10, progress: bool = True, desc: str = "meta-train",
               stop_hint: str = "lower the outer learning rate or check the data, then rerun with --resume",
               before_log: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train `learner` until `learner.step == steps`; returns `learner.deploy()`.

    Every row (after `before_log(row)`, e.g. to add timings) is appended to `OUT/metrics.jsonl`
    by rank 0. A checkpoint is written after every validation (`evaluate`, every `val_every`
    steps and at the last step; also at step 0 with `val_at_start`), every `ckpt_every` steps
    and at the end. After `max_bad_steps` skipped steps the run stops with one `MetaclError`
    line; the last checkpoint is the last good state. Every rank calls `deploy` (rank 0 writes).
    """
    from tqdm.auto import tqdm

    from metacl import distributed
    from metacl.utils import append_jsonl

    out = Path(learner.out)
    if learner.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if learner.step == 0 and val_every > 0 and val_at_start:
        learner.evaluate()  # step 0: the untrained meta-learner as the reference
    bar = tqdm(total=steps, initial=learner.step, desc=desc, disable=not progress or not learner.dist.is_main or None)
    while learner.step < steps:
        row = learner.meta_step()
        if before_log is not None:
            before_log(row)
        if learner.dist.is_main:
            append_jsonl(out / METRICS, [row])
        bar.update(1)
        if row.get("skipped") and learner.bad_steps >= max_bad_steps:
            bar.close()
            raise MetaclError(
                f"meta-training stopped at step {learner.step}: {learner.bad_steps} meta-steps had a {row['reason']} "
                f"(--max-bad-steps {max_bad_steps}); {out / CKPT_DIR} holds the last good state; {stop_hint}")
        if val_every > 0 and (learner.step % val_every == 0 or learner.step == steps):
            learner.evaluate()
            save(learner)
        elif learner.step % ckpt_every == 0 or learner.step == steps:
            save(learner)
    bar.close()
    save(learner)  # the final state (also when there was nothing left to do)
    distributed.barrier(learner.dist)
    return learner.deploy()
