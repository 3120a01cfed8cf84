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
from ckl_fixtures import ckl_args, make_tiny_ckl_world

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_ckl_world(tmp_path_factory.mktemp("ddp"))


def _args(world, out):
    return ckl_args(world, out, "--strategy", "finetune")


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
