"""Resume and faults: crash-safe checkpoints, `ckl run` killed with SIGKILL and resumed, NaN limits, bf16.

The kill tests are real kills: a forked child (or a `metacl ckl run` subprocess) dies with
os._exit / SIGKILL at a chosen point, with no Python cleanup running, and the survivor state
on disk is what the next process sees. The stateful-strategy resume test stops the run
in-process instead (an exception no handler catches, right after a checkpoint), which leaves
the same files behind and saves a second torch import on 2 busy cores.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import metacl.checkpoint as ck
from metacl.checkpoint import (find_checkpoint, flatten_state, load_checkpoint, save_checkpoint,
                               unflatten_state)
from metacl.cli.main import main
from ckl_fixtures import ckl_args, make_tiny_ckl_world

# ----------------------------------------------------------------------------- checkpoint writes


def _write(path, value):
    save_checkpoint(path, {"w": torch.full((3,), float(value))}, {"step": value})


def _killed_write(path, stage: str) -> None:
    """Fork; the child starts writing checkpoint 2 over checkpoint 1 and dies at `stage`."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            calls = {"replace": 0}
            real_replace, real_rmtree, real_save = os.replace, ck.shutil.rmtree, ck.save_file

            def die():
                os._exit(0)

            if stage == "tensors":
                def save_file(t, f):
                    Path(f).write_bytes(b"\x00" * 7)  # half a file
                    die()
                ck.save_file = save_file
            elif stage == "state":
                def dump(obj, f, **kw):
                    f.write('{"step": ')
                    f.flush()
                    die()
                ck.json.dump = dump
            elif stage.startswith("replace"):  # replace<k>: die just before the k-th os.replace
                k = int(stage[len("replace"):])

                def replace(a, b):
                    calls["replace"] += 1
                    if calls["replace"] == k:
                        die()
                    real_replace(a, b)
                ck.os.replace = replace
            elif stage == "cleanup":
                def rmtree(p, **kw):
                    die()
                ck.shutil.rmtree = rmtree
            _write(path, 2)
        finally:
            os._exit(1)  # reached only if the write was not killed
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, f"child was not killed at stage {stage}"


# os.replace calls of one write: 1 = state.json into the temp dir, 2 = old checkpoint aside,
# 3 = new checkpoint into place. After 3 only the cleanup of leftovers remains.
@pytest.mark.parametrize("stage,expect", [("tensors", 1), ("state", 1), ("replace1", 1), ("replace2", 1),
                                          ("replace3", {1, 2}), ("cleanup", 2)])
def test_kill_at_any_point_of_a_write_leaves_a_loadable_checkpoint(tmp_path, stage, expect):
    path = tmp_path / "ckpt"
    _write(path, 1)
    _killed_write(path, stage)
    tensors, state = load_checkpoint(path)
    expect = expect if isinstance(expect, set) else {expect}
    assert state["step"] in expect and torch.equal(tensors["w"], torch.full((3,), float(state["step"])))
    if stage == "replace3":  # the dangerous gap: no `ckpt` dir at all, only leftovers
        assert not path.exists() and find_checkpoint(path) is not None
    # the next successful write replaces it and removes every leftover of the killed one
    _write(path, 3)
    assert load_checkpoint(path)[1]["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from metacl.errors import CheckpointError

    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(tmp_path / "nothing")


@pytest.mark.parametrize("name", ["adamw", "sgd", "learned"])
def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path, name):
    from metacl.ckl.optimizers import build_optimizer

    def make(params):
        opt = build_optimizer(name, params, lr=1e-2, total_steps=10)
        if name == "sgd":
            opt = torch.optim.SGD(params, lr=1e-2, momentum=0.9)
        return opt

    torch.manual_seed(0)
    w = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]

    def step(ps, opt):
        loss = (ps[0].sum(0) * ps[1]).pow(2).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()

    opt = make(w)
    for _ in range(2):
        step(w, opt)
    tensors: dict = {}
    state = {"opt": flatten_state(opt.state_dict(), "optimizer", tensors)}
    save_checkpoint(tmp_path / "c", tensors, state)
    t2, s2 = load_checkpoint(tmp_path / "c")
    w2 = [torch.nn.Parameter(p.detach().clone()) for p in w]
    opt2 = make(w2)
    opt2.load_state_dict(unflatten_state(s2["opt"], t2))
    for _ in range(2):
        step(w, opt)
        step(w2, opt2)
    assert all(torch.equal(a, b) for a, b in zip(w, w2))


# ----------------------------------------------------------------------------- ckl run, killed

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_ckl_world(tmp_path_factory.mktemp("resume"), old_corpus=True)


_args = ckl_args


WALL_CLOCK = ("seconds", "tl_seconds_per_query", "nf_seconds_per_query", "val_seconds_per_query", "peak_mem_mib")


def _rows(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows),
                  key=lambda r: (r["seed"], r["epoch"]))


def _ckpt_step(out) -> int:
    try:
        return json.loads((Path(out) / "checkpoint" / "state.json").read_text())["train"]["position"]["step"]
    except (OSError, ValueError, KeyError):
        return -1


def _start_paused_run(args, at_step: int, log: Path) -> subprocess.Popen:
    """`metacl ckl run` as a subprocess that stops to wait once its checkpoint of `at_step` is written."""
    env = dict(os.environ, METACL_DEBUG_PAUSE_AFTER_CKPT_STEP=str(at_step), OMP_NUM_THREADS=str(torch.get_num_threads()))
    with open(log, "w") as f:  # a file, not a pipe nobody reads while we wait
        return subprocess.Popen([sys.executable, "-m", "metacl.cli.main", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=f)


def _sigkill_at(proc: subprocess.Popen, out: Path, at_step: int, log: Path) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _ckpt_step(out) < at_step:
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {log.read_text()[-2000:]}"
    assert _ckpt_step(out) == at_step
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _check_resumes_like(world, out, ref, args) -> None:
    assert not (out / "summary.json").exists()
    assert [r["epoch"] for r in _rows(out)] == [0, 1]  # epoch 2 never finished
    assert main(args) == 0  # the same command resumes from the checkpoint
    assert _rows(out) == _rows(ref)
    assert not (out / "checkpoint").exists()  # a finished seed's checkpoint is removed
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_sigkilled_run_resumes_to_the_same_metrics(world, tmp_path):
    """A real `metacl ckl run` process (finetune, AdamW), SIGKILLed mid-way through epoch 2."""
    at = _total_steps(world) // 2 + 1
    out, ref = tmp_path / "killed", tmp_path / "ref"
    args = _args(world, out, "--ckpt-every", "1", "--strategy", "finetune")
    log = tmp_path / "killed.stderr"
    proc = _start_paused_run(args, at, log)  # starts first: a new process needs seconds to import torch ...
    try:
        assert main(_args(world, ref, "--strategy", "finetune")) == 0  # ... while the reference runs here
        _sigkill_at(proc, out, at, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    _check_resumes_like(world, out, ref, args)
    assert max(r["tl_acc"] for r in _rows(ref)) > 0  # the compared probes are not all trivially zero


class _Killed(BaseException):
    """Stands for a kill: not an Exception, so no handler in metacl runs on its way out."""


def test_stateful_strategies_and_learned_optimizer_resume_exactly(world, tmp_path, monkeypatch):
    """RecAdam's step counter, replay's generator draws and the learned optimizer's state all come back."""
    import metacl.ckl.protocol as protocol

    at = _total_steps(world) // 2 + 1
    extra = ("--strategy", "recadam", "replay", "--replay-per-batch", "1", "--optimizer", "learned",
             "--learned-prime-docs", "4")   # primed on old text before the first step; a resume restores that state
    out, ref = tmp_path / "cut", tmp_path / "ref"
    assert main(_args(world, ref, *extra)) == 0
    real_save = protocol.save_checkpoint

    def save_then_die(path, tensors, state):
        real_save(path, tensors, state)
        if state["train"]["position"]["step"] == at:
            raise _Killed

    monkeypatch.setattr(protocol, "save_checkpoint", save_then_die)
    args = _args(world, out, "--ckpt-every", "1", *extra)
    with pytest.raises(_Killed):
        main(args)
    monkeypatch.setattr(protocol, "save_checkpoint", real_save)
    _check_resumes_like(world, out, ref, args)
    summary = json.loads((ref / "summary.json").read_text())  # a learned run records its multipliers
    assert (summary["learned_lr"], summary["learned_anchor_lr"], summary["learned_prime_docs"]) == (1.0, None, 4)


def _total_steps(world) -> int:
    from metacl.core.batching import DocBatches
    from metacl.models.loading import load_model_and_tokenizer

    root, model = world
    _, tok = load_model_and_tokenizer(model, device="cpu")
    docs = [json.loads(l)["evidence"] for l in (root / "world" / "tl.jsonl").read_text().splitlines()]
    return 2 * len(DocBatches(tok, docs, 3, 10))


# ----------------------------------------------------------------------------- NaN / inf


def test_too_many_nan_steps_stop_the_run_with_one_line_and_keep_the_checkpoint(world, tmp_path, monkeypatch, capsys):
    from metacl.strategies import base

    class NaNFromStep3(base.Strategy):
        name = "nan_from_step3"
        description = "test only: NaN loss from the 4th step on"

        def extra_loss(self, ctx, batch, logits):
            return torch.tensor(float("nan")) if ctx.step >= 3 else None

    monkeypatch.setitem(base.REGISTRY, NaNFromStep3.name, NaNFromStep3)
    out = tmp_path / "nan"
    rc = main(_args(world, out, "--strategy", "nan_from_step3", "--ckpt-every", "1", "--max-bad-steps", "2"))
    err = [l for l in capsys.readouterr().err.strip().splitlines() if "Loading weights" not in l]  # HF's bar
    assert rc == 2 and len(err) == 1, err
    assert "seed 0 epoch 1 step 5" in err[0] and "--max-bad-steps 2" in err[0] and "lower --lr" in err[0]
    assert "checkpoint" in err[0] and not (out / "summary.json").exists()
    tensors, state = load_checkpoint(out / "checkpoint")
    assert state["train"]["position"]["step"] == 4 and state["train"]["position"]["skipped"] == 1
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model/"))


def test_non_finite_gradient_is_skipped_not_applied(world):
    from metacl.ckl.train import TooManyBadSteps, train_task
    from metacl.models.loading import load_model_and_tokenizer
    from metacl.strategies.base import Strategy, TrainContext

    class NaNGrad(Strategy):
        """Finite loss, NaN gradient on the first step only."""
        name = "nangrad"

        def extra_loss(self, ctx, batch, logits):
            if ctx.step == 0:
                logits.register_hook(lambda g: g * float("nan"))
            return None

    model, tok = load_model_and_tokenizer(world[1], device="cpu")
    docs = ["Ada Quill works for Northwind Labs .", "Marco Vell works for Blue Harbor ."]
    ctx = TrainContext(model=model, tokenizer=tok, device=torch.device("cpu"), train_docs=docs, batch_size=2,
                       max_length=64, generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    snaps = []
    stats = train_task(ctx, [NaNGrad()], 2, lambda ps: torch.optim.SGD(ps, lr=0.1), progress=False,
                       on_epoch_end=lambda e, s: snaps.append({n: p.detach().clone() for n, p in model.named_parameters()}))
    assert stats["skipped_steps"] == 1 and math.isnan(stats["losses"][0])
    assert all(torch.equal(before[n], snaps[0][n]) for n in before)  # the NaN step changed nothing
    assert any(not torch.equal(before[n], snaps[1][n]) for n in before)
    with pytest.raises(TooManyBadSteps, match="--max-bad-steps 1"):
        ctx.step = 0
        train_task(ctx, [NaNGrad()], 1, lambda ps: torch.optim.SGD(ps, lr=0.1), progress=False, max_bad_steps=1)


# ----------------------------------------------------------------------------- precision


def test_bf16_run_on_cpu_has_finite_metrics_and_peak_memory(world, tmp_path):
    out = tmp_path / "bf16"
    assert main(_args(world, out, "--strategy", "finetune", "--precision", "bf16", "--epochs", "1")) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["precision"] == "bf16" and r["peak_mem_mib"] > 0 and r["peak_mem_kind"] == "cpu_max_rss"
               for r in rows)
    assert all(math.isfinite(r[k]) for r in rows for k in ("tl_acc", "nf_acc", "val_acc"))
    assert math.isfinite(rows[1]["train_loss"])
    from metacl.ckl.config import CklConfig

    assert CklConfig(precision="bf16").hash() != CklConfig().hash()  # a bf16 run is a different run
    assert CklConfig(ckpt_every=5, max_bad_steps=3).hash() == CklConfig().hash()  # these change no number
