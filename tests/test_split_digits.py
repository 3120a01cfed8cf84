"""Split-Digits benchmark and the ACC/BWT/FWT metrics."""

import pytest
import torch

from metacl.benchmarks.cl_metrics import acc, bwt, cl_summary, fwt
from metacl.benchmarks.split_digits import RunConfig, make_benchmark, run_sequence
from metacl.errors import MetaclError


def test_metrics_on_a_hand_made_matrix():
    R = [[0.9, 0.3, 0.2],
         [0.7, 0.8, 0.4],
         [0.6, 0.5, 1.0]]
    b = [0.1, 0.2, 0.3]
    assert acc(R) == pytest.approx((0.6 + 0.5 + 1.0) / 3)
    assert bwt(R) == pytest.approx(((0.6 - 0.9) + (0.5 - 0.8)) / 2)
    assert fwt(R, b) == pytest.approx(((0.3 - 0.2) + (0.4 - 0.3)) / 2)
    assert fwt(R) == pytest.approx((0.3 + 0.4) / 2)
    assert cl_summary([[0.5]]) == {"ACC": 0.5, "BWT": 0.0, "FWT": 0.0}
    with pytest.raises(MetaclError):
        acc([[1.0, 0.5]])
    with pytest.raises(MetaclError):
        fwt(R, [0.1])


def test_benchmarks_are_disjoint_from_the_meta_pool_and_deterministic():
    a = make_benchmark("split", seed=0)
    b = make_benchmark("split", seed=0)
    assert len(a) == 5 and torch.equal(a[0].x_train, b[0].x_train)
    assert set(a[1].y_train.tolist()) == {2, 3} and a[1].classes == (2, 3)
    meta = make_benchmark("split", seed=0, pool="meta")
    rows_bench = {tuple(r.tolist()) for t in a for r in torch.cat([t.x_train, t.x_test])}
    rows_meta = {tuple(r.tolist()) for t in meta for r in torch.cat([t.x_train, t.x_test])}
    # the digits set has a few exact duplicate images; the pools must not share more than those
    assert len(rows_bench & rows_meta) < 0.02 * len(rows_bench)
    perm = make_benchmark("permuted", seed=1)
    assert perm[0].classes is None and not torch.equal(perm[0].x_train, perm[1].x_train)
    with pytest.raises(MetaclError):
        make_benchmark("rotated")


@pytest.mark.parametrize("method", ["sgd", "adam", "ewc", "lwf", "replay"])
def test_every_baseline_learns_the_first_task(method):
    torch.set_num_threads(1)
    tasks = make_benchmark("split", seed=0)[:2]
    out = run_sequence(tasks, method, seed=0, cfg=RunConfig(steps_per_task=15))
    R = out["R"]
    assert R[0][0] > 0.85 and len(out["baseline"]) == 2
    assert set(out) >= {"ACC", "BWT", "FWT", "R"}
    with pytest.raises(MetaclError):
        run_sequence(tasks, "rmsprop")
