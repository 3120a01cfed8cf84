"""experiments/rho1_reference.py: the base LM fine-tuned on curated documents, usable as rho1_ref's reference."""

import json
import subprocess
import sys
from pathlib import Path

from ckl_fixtures import ckl_args, make_tiny_ckl_world
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "rho1_reference.py"


def _build(model, docs, out, *extra):
    return subprocess.run([sys.executable, str(SCRIPT), "--model", str(model), "--docs", str(docs), "--out", str(out),
                           "--max-length", "12", "--batch-size", "3", "--lr", "3e-2", *extra],
                          capture_output=True, text=True, timeout=120)


def test_reference_learns_the_docs_leaves_the_base_alone_and_feeds_rho1_ref(tmp_path):
    world = make_tiny_ckl_world(tmp_path)
    root, model = world
    base_before = load_file(str(model / "model.safetensors"))
    proc = _build(model, root / "world" / "nf.jsonl", tmp_path / "ref", "--epochs", "4")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "ref" / "reference.json").read_text())
    assert info["n_docs"] == len((root / "world" / "nf.jsonl").read_text().splitlines()) and len(info["epoch_loss"]) == 4 and info["epoch_loss"][-1] < info["epoch_loss"][0]
    ref = load_file(str(tmp_path / "ref" / "model.safetensors"))
    assert any(not ref[k].equal(base_before[k]) for k in ref)
    assert all(v.equal(load_file(str(model / "model.safetensors"))[k]) for k, v in base_before.items())
    assert not (tmp_path / "ref.tmp").exists()
    run = subprocess.run([sys.executable, "-m", "metacl", *ckl_args(world, tmp_path / "run", "--strategy", "rho1_ref",
                          "--rho1-ref-model", str(tmp_path / "ref"))], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["strategies"] == ["rho1_ref"]


def test_an_existing_out_is_refused_with_one_line_and_exit_2(tmp_path):
    root, model = make_tiny_ckl_world(tmp_path)
    (tmp_path / "ref").mkdir()
    proc = _build(model, root / "world" / "nf.jsonl", tmp_path / "ref", "--epochs", "1")
    assert proc.returncode == 2 and "exists" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
