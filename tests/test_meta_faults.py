"""Faults in meta-training: NaN steps are skipped without touching the weights, too many stop the
run with one clear message, a SIGKILLed run resumes to the same result, bf16 runs on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import metacl.meta.train_token_weighting as ttw
import metacl.optim.meta_train as mt
from metacl.checkpoint import load_checkpoint
from metacl.cli.main import main
from metacl.errors import MetaclError
from metacl.meta.train_token_weighting import MetaConfig, MetaExample, MetaTrainer
from metacl.optim.meta_train import MetaTrainConfig, meta_train


def _rows(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def _poison_toy(monkeypatch, bad_calls: set[int]) -> None:
    """Make the toy family's held-out targets NaN on the given episode draws (0-based), i.e. steps."""
    calls = iter(range(10**6))
    real = mt.FAMILIES["toy"]

    def family(rng, cfg, pool="meta"):
        ep = real(rng, cfg, pool)
        if next(calls) in bad_calls:
            x, y = ep.tasks[0][1]
            ep.tasks[0] = (ep.tasks[0][0], (x, torch.full_like(y, float("nan"))))
        return ep

    monkeypatch.setitem(mt.FAMILIES, "toy", family)


def _cfg(**kw) -> MetaTrainConfig:
    return MetaTrainConfig(**{"family": "toy", "inner_steps": 3, "eval_episodes": 0, "ckpt_every": 1, **kw})


# ----------------------------------------------------------------------------- learned optimizer
def test_optimizer_nan_step_is_skipped_bit_for_bit(tmp_path, monkeypatch):
    meta_train(_cfg(steps=2), tmp_path / "good", progress=False)
    _poison_toy(monkeypatch, {2})  # step 3's episode
    meta_train(_cfg(steps=3), tmp_path / "nan", progress=False)
    (a, sa), (b, sb) = load_checkpoint(tmp_path / "good" / "checkpoint"), load_checkpoint(tmp_path / "nan" / "checkpoint")
    assert sb["step"] == 3 and sa["step"] == 2
    assert a.keys() == b.keys() and any(k.startswith("adam.") for k in a)
    for k in a:  # meta-parameters and Adam moments: exactly those of step 2
        assert torch.equal(a[k], b[k]), k
    assert sa["adam_steps"] == sb["adam_steps"]
    rows = _rows(tmp_path / "nan")
    assert [r["skipped"] for r in rows] == [False, False, True]
    assert rows[2]["reason"] == "non-finite meta-loss" and rows[2]["bad_steps"] == 1 and sb["bad_steps"] == 1


def test_optimizer_stops_after_max_bad_steps_with_last_good_checkpoint(tmp_path, monkeypatch):
    meta_train(_cfg(steps=1), tmp_path / "good", progress=False)
    _poison_toy(monkeypatch, set(range(1, 100)))  # every step after the first
    with pytest.raises(MetaclError) as e:
        meta_train(_cfg(steps=10, max_bad_steps=3), tmp_path / "nan", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "stopped at step 4" in msg and "--max-bad-steps 3" in msg and "--meta-lr" in msg
    good, _ = load_checkpoint(tmp_path / "good" / "checkpoint")
    last, st = load_checkpoint(tmp_path / "nan" / "checkpoint")  # loadable, and still the step-1 weights
    assert st["step"] == 3 and all(torch.equal(good[k], last[k]) for k in good)
    assert [r["skipped"] for r in _rows(tmp_path / "nan")] == [False, True, True, True]
    assert not (tmp_path / "nan" / "optimizer.safetensors").exists()  # nothing claims to be a finished run
    # the CLI turns it into one line and exit code 2
    assert main(["meta-train", "optimizer", "--family", "toy", "--inner-steps", "3", "--steps", "5",
                 "--eval-episodes", "0", "--max-bad-steps", "2", "--no-progress", "--out", str(tmp_path / "cli")]) == 2


def _kill_after_checkpoint(cmd: list[str], out: Path, step: int = 2) -> None:
    """Start `cmd`, SIGKILL it as soon as out/checkpoint records `step`, and check it really died mid-run."""
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if json.loads(state.read_text())["step"] >= step:
                    break
            except (OSError, ValueError, KeyError):
                pass  # not written yet, or caught between renames
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def test_optimizer_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = ["meta-train", "optimizer", "--family", "toy", "--inner-steps", "3", "--steps", "8", "--ckpt-every", "1",
            "--eval-episodes", "1", "--no-progress"]
    killed = tmp_path / "killed"
    _kill_after_checkpoint([sys.executable, "-m", "metacl.cli.main", *args, "--out", str(killed)], killed)
    done_before = load_checkpoint(killed / "checkpoint")[1]["step"]
    assert 2 <= done_before < 8
    assert not (killed / "optimizer.safetensors").exists()
    assert main(args + ["--out", str(killed), "--resume"]) == 0
    assert main(args + ["--out", str(tmp_path / "straight")]) == 0
    a, b = load_checkpoint(killed / "checkpoint"), load_checkpoint(tmp_path / "straight" / "checkpoint")
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert a[1]["rng"] == b[1]["rng"] and "numpy" in a[1]["rng"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]
    assert strip(_rows(killed)) == strip(_rows(tmp_path / "straight"))  # final metrics, every row once
    ev = lambda d: json.loads((d / "summary.json").read_text())["eval_heldout"]
    assert ev(killed) == ev(tmp_path / "straight")


def test_optimizer_resumes_from_a_checkpoint_left_aside_by_a_killed_write(tmp_path):
    """A kill between save_checkpoint's two renames leaves only `.checkpoint.old-*`: resume must find it."""
    run = tmp_path / "run"
    meta_train(_cfg(steps=2), run, progress=False)
    os.replace(run / "checkpoint", run / ".checkpoint.old-killed")
    meta_train(_cfg(steps=3), run, resume=True, progress=False)
    assert [r["step"] for r in _rows(run)] == [1, 2, 3]  # continued at step 3, did not restart
    assert load_checkpoint(run / "checkpoint")[1]["step"] == 3


def test_optimizer_bf16_runs_and_reports_peak_memory(tmp_path):
    s = meta_train(_cfg(steps=1, precision="bf16", eval_episodes=1), tmp_path / "bf16", progress=False)
    row = _rows(tmp_path / "bf16")[0]
    assert not row["skipped"] and torch.isfinite(torch.tensor(row["meta_loss"]))
    assert s["peak_mem_kind"] == "cpu_max_rss" and s["peak_mem_mib"] > 10
    with pytest.raises(MetaclError, match="--precision"):
        meta_train(_cfg(steps=1, precision="fp8"), tmp_path / "x", progress=False)


# ----------------------------------------------------------------------------- token weighter
@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from metacl.models.pretrain import tiny_model_for_tests

    return tiny_model_for_tests(tmp_path_factory.mktemp("lm"), texts=["the key is red", "a stone by the river"])


def _trainer(lm, out, **kw) -> MetaTrainer:
    from metacl.models.loading import load_model_and_tokenizer

    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(lm)
    train = [MetaExample(f"apple {w} stone key {w}.", "key", w) for w in ("red", "blue", "green", "gold")]
    cfg = MetaConfig(**{"inner_steps": 1, "inner_lr": 1e-2, "inner_optimizer": "sgd", "meta_batch": 2,
                        "outer_lr": 1e-2, "steps": 3, "val_every": 0, "max_length": 24, **kw})
    return MetaTrainer(model, tok, train, out, cfg, progress=False)


def _poison_objective(monkeypatch, bad_calls: set[int]) -> None:
    calls = iter(range(10**6))
    real = ttw.meta_objective

    def objective(*a, **k):
        out = real(*a, **k)
        if next(calls) in bad_calls:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(ttw, "meta_objective", objective)


def test_token_weighter_nan_step_skipped_then_stop(tiny_lm, tmp_path, monkeypatch):
    _poison_objective(monkeypatch, {1, 2, 3})
    tr = _trainer(tiny_lm, tmp_path / "tw", max_bad_steps=2, ckpt_every=1)
    tr.out.mkdir(parents=True)
    tr.meta_step()  # a good step: AdamW now has moments
    before = {k: v.clone() for k, v in tr.weighter.state_dict().items()}
    moments = {i: {k: v.clone() for k, v in s.items()} for i, s in tr.opt.state_dict()["state"].items()}
    row = tr.meta_step()  # NaN
    assert row["skipped"] and row["reason"] == "non-finite meta-loss" and tr.step == 2
    for k, v in tr.weighter.state_dict().items():
        assert torch.equal(v, before[k]), k
    after = tr.opt.state_dict()["state"]
    assert after.keys() == moments.keys()
    assert all(torch.equal(after[i][k], moments[i][k]) for i in moments for k in moments[i])
    tr.save()
    with pytest.raises(MetaclError) as e:
        tr.run(resume=True)  # step 3 is NaN again: 2 bad steps -> stop
    assert "stopped at step 3" in str(e.value) and "--outer-lr" in str(e.value) and "\n" not in str(e.value)
    tensors, state = load_checkpoint(tmp_path / "tw" / "checkpoint")  # the last good state, loadable
    assert state["step"] == 2 and state["bad_steps"] == 1
    assert all(torch.equal(tensors[f"weighter.{k}"], v) for k, v in before.items())
    rows = _rows(tmp_path / "tw")
    assert rows[-1]["skipped"] and rows[-1]["bad_steps"] == 2


def test_token_weighter_bf16_step_is_finite(tiny_lm, tmp_path):
    tr = _trainer(tiny_lm, tmp_path / "bf16", precision="bf16", steps=1)
    res = tr.run()
    row = _rows(tmp_path / "bf16")[0]
    assert not row.get("skipped") and torch.isfinite(torch.tensor(row["meta_loss"])) and row["grad_norm"] > 0
    assert res["peak_mem_kind"] == "cpu_max_rss" and res["peak_mem_mib"] > 10
    assert next(tr.weighter.parameters()).dtype == torch.float32  # master weights stay fp32


KILL_WORKER = """
import sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from test_meta_faults import _trainer
lm, out = sys.argv[1:]
_trainer(lm, out, steps=6, ckpt_every=1).run()
"""


def test_token_weighter_sigkill_then_resume_equals_uninterrupted(tiny_lm, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(KILL_WORKER.format(tests=str(Path(__file__).parent)))
    killed = tmp_path / "killed"
    _kill_after_checkpoint([sys.executable, str(script), str(tiny_lm), str(killed)], killed)
    assert 2 <= load_checkpoint(killed / "checkpoint")[1]["step"] < 6
    resumed = _trainer(tiny_lm, killed, steps=6, ckpt_every=1)
    resumed.run(resume=True)
    straight = _trainer(tiny_lm, tmp_path / "straight", steps=6, ckpt_every=1)
    straight.run()
    for (n, a), (_, b) in zip(straight.weighter.state_dict().items(), resumed.weighter.state_dict().items()):
        assert torch.equal(a, b), n
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(_rows(killed)) == strip(_rows(tmp_path / "straight"))
    assert len(_rows(killed)) == 6


def test_truncate_jsonl_drops_rows_after_checkpoint_and_a_partial_last_line(tmp_path):
    """A kill mid-write leaves half a JSON line; resume must not crash on it (found by the bad-input audit)."""
    from metacl.utils import truncate_jsonl

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "loss": 0.8}\n{"step": 4, "lo')
    truncate_jsonl(log, 2)
    assert log.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n'
