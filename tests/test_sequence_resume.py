"""`ckl sequence` is a P-task stream of the one runner, so it resumes after a SIGKILL like `ckl run`.

A real `metacl ckl sequence --precision bf16 --ckpt-every 2` process (online EWC, whose Fisher
is state carried from period 1 into period 2) is SIGKILLed right after its checkpoint in the
middle of period 2; the same command run again finishes from that checkpoint, and its
accuracy matrix, NF curve and per-epoch losses equal those of an uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from metacl.cli.main import main


def _world_and_model(tmp_path):
    from metacl.data.world import write_world
    from metacl.models.pretrain import tiny_model_for_tests

    world = tmp_path / "world"
    write_world(world, 40, 0)
    texts = [json.loads(l)["text"] for l in (world / "pretrain_corpus.jsonl").read_text().splitlines()[:200]]
    return world, tiny_model_for_tests(tmp_path / "lm", texts)


def _steps_of_period_1(world, model, batch_size: int, max_length: int, epochs: int) -> int:
    from metacl.core.batching import DocBatches
    from metacl.data.world_sequence import build_sequence, load_world
    from metacl.models.loading import load_model_and_tokenizer

    seq = build_sequence(load_world(world), n_periods=2, facts_per_period=3, seed=0)
    _, tok = load_model_and_tokenizer(model, device="cpu")
    return epochs * len(DocBatches(tok, [r["evidence"] for r in seq["periods"][0]], batch_size, max_length))


def _ckpt(out: Path) -> dict:
    try:
        return json.loads((out / "runs" / "ewc" / "checkpoint_seed_0" / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def test_sigkilled_bf16_sequence_resumes_to_the_same_matrix(tmp_path, capsys):
    world, model = _world_and_model(tmp_path)
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    args = lambda out: ["ckl", "sequence", "--model", str(model), "--world", str(world), "--out", str(out),
                        "--strategies", "ewc", "--ewc-fisher-docs", "4", "--periods", "2", "--facts-per-period", "3",
                        "--epochs", "2", "--batch-size", "1", "--max-length", "64", "--max-nf", "4", "--lr", "1e-3",
                        "--precision", "bf16", "--ckpt-every", "2", "--device", "cpu"]
    at = _steps_of_period_1(world, model, 1, 64, 2) + 2  # period 2, its second step
    env = dict(os.environ, METACL_DEBUG_PAUSE_AFTER_CKPT_STEP=str(at), OMP_NUM_THREADS=str(torch.get_num_threads()))
    log = tmp_path / "killed.stderr"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "metacl.cli.main", *args(killed)], env=env,
                                stdout=subprocess.DEVNULL, stderr=f)
    try:
        assert main(args(ref)) == 0  # the reference runs here while the other process starts
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not (
                _ckpt(killed).get("task") == 1 and _ckpt(killed)["train"]["position"]["step"] == 2):
            time.sleep(0.05)
        assert proc.poll() is None, f"run ended before it could be killed: {log.read_text()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    state = _ckpt(killed)
    assert state["task"] == 1 and len(state["R"]) == 1  # period 1 scored and stored, period 2 in progress
    seed_file = lambda out: out / "runs" / "ewc" / "seed_0.json"
    assert not seed_file(killed).exists() and not (killed / "summary.json").exists()

    capsys.readouterr()
    assert main(args(killed)) == 0  # the same command resumes from the checkpoint
    assert "ewc seed 0: resuming from" in capsys.readouterr().out  # from the checkpoint, not from scratch
    a, b = json.loads(seed_file(killed).read_text()), json.loads(seed_file(ref).read_text())
    assert a["R"] == b["R"] and a["nf"] == b["nf"] and a["losses"] == b["losses"]
    assert len(a["R"]) == 2 and len(a["losses"]) == 2 and all(len(l) == 2 for l in a["losses"])
    assert not (killed / "runs" / "ewc" / "checkpoint_seed_0").exists()  # removed once the seed is done
    sk, sr = (json.loads((o / "summary.json").read_text())["strategies"]["ewc"] for o in (killed, ref))
    assert sk["ACC"] == sr["ACC"] and sk["BWT"] == sr["BWT"]
    resolved = (killed / "resolved_config.yaml").read_text()
    assert "precision: bf16" in resolved and "ckpt_every: 2" in resolved


def test_two_gloo_ranks_run_the_sequence_like_one_process(tmp_path):
    """`ckl sequence` under torchrun (2 gloo processes): rank 0 writes the matrix of 1 process."""
    import pytest

    world, model = _world_and_model(tmp_path)
    args = lambda out: ["ckl", "sequence", "--model", str(model), "--world", str(world), "--out", str(out),
                        "--strategies", "finetune", "--periods", "2", "--facts-per-period", "3", "--epochs", "1",
                        "--batch-size", "3", "--max-length", "64", "--max-nf", "4", "--lr", "1e-3", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "metacl.cli.main", *args(two)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert main(args(one)) == 0
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "2 data-parallel ranks" in stdout
    a, b = (json.loads((o / "runs" / "finetune" / "seed_0.json").read_text()) for o in (one, two))
    assert len(b["R"]) == 2
    for ra, rb in zip(a["R"] + [a["nf"]], b["R"] + [b["nf"]]):
        assert rb == pytest.approx(ra, abs=1e-6)
    flat = lambda r: [x for per_task in r["losses"] for x in per_task]
    assert len(flat(b)) == 2 and flat(b) == pytest.approx(flat(a), rel=1e-4)  # the same training, split over ranks
    assert not list(two.glob(".*")) and not (two / "runs" / "finetune" / "checkpoint_seed_0").exists()
