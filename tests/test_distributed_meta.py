"""torchrun data parallelism for both meta-learners: 2 gloo processes == 1 process, same global batch.

One `torchrun --nproc_per_node 2` launch (CPU, gloo) runs a short meta-training of the learned
optimizer (toy family) and of the token weighter (tiny LM, generated world); the tests compare
what rank 0 saved with single-process runs of the same global batch done here in-process, and
check that a different global batch gives different parameters (so equality is not vacuous).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metacl import distributed as dist
from metacl.errors import MetaclError

OPT_ARGS = ["meta-train", "optimizer", "--family", "toy", "--inner-steps", "3", "--steps", "3", "--meta-batch", "2",
            "--eval-episodes", "0", "--ckpt-every", "1", "--no-progress"]

WORKER = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from metacl.cli.main import main
from test_distributed_meta import train_optimizer_with_nan, train_token_weighter
opt_out, lm, world, tw_out, nan_out = sys.argv[1:]
assert main({opt!r} + ["--out", opt_out]) == 0
train_token_weighter(Path(lm), Path(world), Path(tw_out))
train_optimizer_with_nan(Path(nan_out))
"""


def train_optimizer_with_nan(out: Path) -> None:
    """Learned-optimizer meta-training whose step-2 episode #1 has NaN targets.

    With 2 ranks only rank 1 runs that episode; rank 0 must skip the step too (all_reduce_flag).
    """
    import metacl.optim.meta_train as mt

    calls = iter(range(10**6))

    def family(rng, cfg, pool="meta"):
        ep = mt.toy_episode(rng, cfg, pool)
        if next(calls) == 3:  # draws: step 1 -> 0, 1; step 2 -> 2, 3
            x, y = ep.tasks[0][1]
            ep.tasks[0] = (ep.tasks[0][0], (x, torch.full_like(y, float("nan"))))
        return ep

    mt.FAMILIES["toy_nan"] = family
    try:
        mt.meta_train(mt.MetaTrainConfig(family="toy_nan", inner_steps=3, steps=3, meta_batch=2, eval_episodes=0),
                      out, progress=False)
    finally:
        del mt.FAMILIES["toy_nan"]


def train_token_weighter(lm: Path, world: Path, out: Path, meta_batch: int = 2) -> None:
    """A short token-weighter meta-training in float64.

    float64 because AdamW's first steps are ~lr * sign(grad): a gradient entry that is ~0 up to
    float32 rounding (batched vs. per-rank padding and matmul shapes) flips sign and moves a
    weight by a whole step. In float64 the rounding noise is far below Adam's eps.
    """
    from metacl.core.probes import split_probe
    from metacl.data.lama import load_lama_jsonl
    from metacl.meta.train_token_weighting import MetaConfig, MetaTrainer, examples_from_items
    from metacl.models.loading import load_model_and_tokenizer

    torch.manual_seed(0)  # the weighter's head is initialised from the global stream
    model, tok = load_model_and_tokenizer(lm, device=torch.device("cpu"))
    nf = [split_probe(it) for it in load_lama_jsonl(world / "meta_nf.jsonl")]
    train = examples_from_items(load_lama_jsonl(world / "meta_train.jsonl"))
    cfg = MetaConfig(inner_steps=2, inner_lr=1e-2, outer_lr=1e-2, retention=0.5, retention_probes=1,
                     meta_batch=meta_batch, steps=2, val_every=0, max_length=48, seed=3)
    MetaTrainer(model.double(), tok, train, out, cfg, nf, progress=False).run()


def _weights(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor a run saved under `run` (all safetensors files, keyed by file and name)."""
    out = {}
    for f in sorted(run.rglob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            out[f"{f.relative_to(run)}:{k}"] = v
    assert out, f"no safetensors under {run}"
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 2-process torchrun job that meta-trains both meta-learners; returns the folders."""
    from metacl.data.world import write_world
    from metacl.models.pretrain import tiny_model_for_tests

    tmp = tmp_path_factory.mktemp("ddp")
    world = tmp / "world"
    write_world(world, 20, seed=0)
    texts = [json.loads(l)["text"] for l in (world / "pretrain_corpus.jsonl").read_text().splitlines()[:100]]
    lm = tiny_model_for_tests(tmp / "lm", texts=texts, vocab_size=340)
    script = tmp / "worker.py"
    script.write_text(WORKER.format(opt=OPT_ARGS, tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp / "opt2"), str(lm), str(world), str(tmp / "tw2"), str(tmp / "nan2")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {"tmp": tmp, "world": world, "lm": lm}


def test_optimizer_two_processes_equal_one_process(launched):
    from metacl.cli.main import main

    tmp = launched["tmp"]
    assert main(OPT_ARGS + ["--out", str(tmp / "opt1")]) == 0
    two, one = _weights(tmp / "opt2"), _weights(tmp / "opt1")
    assert _max_diff(two, one) < 1e-5
    rows = lambda d: [(r["step"], r["meta_loss"]) for r in map(json.loads, (tmp / d / "metrics.jsonl").read_text().splitlines())]
    r2, r1 = rows("opt2"), rows("opt1")
    assert [s for s, _ in r2] == [s for s, _ in r1]
    assert [l for _, l in r2] == pytest.approx([l for _, l in r1], rel=1e-6)  # rank 0 logs the global mean, not its share
    assert json.loads((tmp / "opt2" / "summary.json").read_text())["world_size"] == 2
    # the check can fail: another global batch (4 episodes) moves the parameters elsewhere
    other = list(OPT_ARGS)
    other[other.index("--meta-batch") + 1] = "4"
    assert main(other + ["--out", str(tmp / "opt1b")]) == 0
    assert _max_diff(_weights(tmp / "opt1b"), one) > 1e-4


def test_token_weighter_two_processes_equal_one_process(launched):
    tmp, lm, world = launched["tmp"], launched["lm"], launched["world"]
    train_token_weighter(lm, world, tmp / "tw1")
    two, one = _weights(tmp / "tw2" / "last"), _weights(tmp / "tw1" / "last")
    assert _max_diff(two, one) < 1e-5
    q = lambda d: [r["query_nll"] for r in map(json.loads, (tmp / d / "metrics.jsonl").read_text().splitlines())]
    assert q("tw2") == pytest.approx(q("tw1"), rel=1e-5)
    train_token_weighter(lm, world, tmp / "tw1b", meta_batch=4)  # another global batch: other weights
    assert _max_diff(_weights(tmp / "tw1b" / "last"), one) > 1e-6


def test_ranks_agree_to_skip_a_nan_step(launched):
    tmp = launched["tmp"]
    train_optimizer_with_nan(tmp / "nan1")
    rows = [json.loads(l) for l in (tmp / "nan2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [False, True, False]  # rank 0's own episode was finite
    assert _max_diff(_weights(tmp / "nan2"), _weights(tmp / "nan1")) < 1e-5


def test_shard_and_single_process_helpers():
    two = [dist.DistInfo(r, 2, r) for r in range(2)]
    assert [dist.shard(list("abcd"), i) for i in two] == [["a", "b"], ["c", "d"]]
    with pytest.raises(MetaclError, match="multiple of --nproc_per_node"):
        dist.shard([1, 2, 3], two[0])
    single = dist.init()  # no torchrun env in the test process
    assert single == dist.DistInfo(0, 1, 0) and single.is_main and not single.enabled
    g = torch.ones(3)
    dist.all_reduce_mean_([g, None], single)
    assert torch.equal(g, torch.ones(3)) and dist.all_reduce_flag(True, single) and not dist.all_reduce_flag(False, single)
