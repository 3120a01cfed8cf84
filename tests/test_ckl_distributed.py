"""Data-parallel `ckl run`: 2 gloo processes under torchrun give the metrics of 1 process.

The global batch (3 rows) does not split evenly over 2 ranks, so this also checks that each
rank normalises by the token weight of the whole batch, not of its share.
"""

import json
import os
import subprocess
import sys

import pytest

from metacl.cli.main import main

PEOPLE = ["Ada Quill", "Marco Vell", "Lena Ostrow", "Piet Arno", "Sara Lund", "Tomas Reyes"]
ORGS = ["Northwind Labs"] * 3 + ["Blue Harbor"] * 3
CITIES = ["Lisbon", "Rome", "Paris", "Oslo", "Quito", "Lima"]


def _item(i, s, rel, o, ev, code):
    return {"relation_code": code, "uuid": f"u{i}", "task_descriptive": f"{s} {rel} {o} .", "subject": s,
            "relation_label": rel, "object": o, "evidence": ev}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from metacl.models.pretrain import tiny_model_for_tests

    root = tmp_path_factory.mktemp("ddp")
    d = root / "world"
    d.mkdir()
    tl = [_item(i, p, "works for", o, f"{p} works for {o} . {p} works for {o} .", "P108")
          for i, (p, o) in enumerate(zip(PEOPLE, ORGS))]
    nf = [_item(100 + i, p, "lives in", c, f"{p} lives in {c} .", "P551") for i, (p, c) in enumerate(zip(PEOPLE, CITIES))]
    for name, rows in (("tl", tl), ("nf", nf)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = tiny_model_for_tests(root / "model", texts=[r["evidence"] for r in tl + nf] * 3)
    return root, model


def _args(world, out):
    root, model = world
    return ["ckl", "run", "--model", str(model), "--data", str(root / "world"), "--out", str(out), "--epochs", "2",
            "--seeds", "0", "--lr", "6e-2", "--batch-size", "3", "--max-length", "10", "--no-exact-match",
            "--device", "cpu", "--strategy", "finetune"]


def _rows(out):
    keep = ("epoch", "seed", "tl_acc", "nf_acc", "val_acc", "train_loss", "skipped_steps")
    return [{k: r[k] for k in keep} for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_two_gloo_ranks_match_one_process(world, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "metacl.cli.main", *_args(world, two)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert main(_args(world, one)) == 0  # the single-process reference, while torchrun starts up
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "2 data-parallel ranks" in stdout
    a, b = _rows(one), _rows(two)
    assert [r["epoch"] for r in b] == [0, 1, 2] and len(a) == len(b)
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            assert rb[k] == (v if v is None or isinstance(v, int) else pytest.approx(v, rel=1e-4, abs=1e-6)), (k, ra, rb)
    assert (two / "summary.json").is_file() and not list(two.glob(".*"))  # one writer, no debris
