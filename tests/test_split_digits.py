"""Split-Digits benchmark and the ACC/BWT/FWT metrics."""

import pytest
import torch

from metacl.core.cl_metrics import acc, bwt, cl_summary, fwt
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
    tasks = make_benchmark("split", seed=0)[:2]
    out = run_sequence(tasks, method, seed=0, cfg=RunConfig(steps_per_task=15))
    R = out["R"]
    assert R[0][0] > 0.85 and len(out["baseline"]) == 2
    assert set(out) >= {"ACC", "BWT", "FWT", "R"}
    with pytest.raises(MetaclError):
        run_sequence(tasks, "rmsprop")


def test_meta_training_episodes_cover_the_benchmark_scenarios():
    """Episode kinds used to meta-train the learned optimizer: class-IL has no mask, lengths vary."""
    import random

    from metacl.optim.meta_train import MetaTrainConfig, digits_episode

    cfg = MetaTrainConfig(inner_steps=2, tasks_per_episode=5, min_tasks=2, kinds="class")
    lengths = set()
    for s in range(12):
        ep = digits_episode(random.Random(s), cfg)
        lengths.add(len(ep.tasks))
        assert all(train[0][2] is None and held[2] is None for train, held in ep.tasks)  # shared 10-way head
        labels = [set(t[1][1].tolist()) for t in ep.tasks]
        assert all(len(l) == 2 for l in labels) and len(set.union(*labels)) == 2 * len(ep.tasks)
        assert ep.scales == pytest.approx([2.302585] * len(ep.tasks))
    assert min(lengths) >= 2 and max(lengths) <= 5 and len(lengths) >= 3
    split = digits_episode(random.Random(0), MetaTrainConfig(inner_steps=2, tasks_per_episode=3, kinds="split"))
    assert split.tasks[0][1][2] is not None and split.scales == pytest.approx([0.693147] * 3)
    # defaults draw the same episodes as before the new options existed (fixed length, split/permuted)
    assert len(digits_episode(random.Random(3), MetaTrainConfig(inner_steps=2)).tasks) == 2
    for bad in (dict(kinds="rotated"), dict(kinds=""), dict(min_tasks=4, tasks_per_episode=3),
                dict(normalize="zscore"), dict(learn_reduce="max")):
        with pytest.raises(MetaclError):
            MetaTrainConfig(**bad).check()


def test_log_classes_normalisation_divides_each_task_loss():
    import random

    from metacl.engine import adamw
    from metacl.optim.meta_train import MetaTrainConfig, digits_episode, episode_loss

    torch.manual_seed(0)
    base = MetaTrainConfig(inner_steps=3, tasks_per_episode=2, kinds="permuted")
    ep = digits_episode(random.Random(1), base)
    raw, p_raw = episode_loss(ep, adamw(lr=1e-3), base, differentiable=False)
    norm = MetaTrainConfig(inner_steps=3, tasks_per_episode=2, kinds="permuted", normalize="log_classes", learn_reduce="mean")
    scaled, p_norm = episode_loss(ep, adamw(lr=1e-3), norm, differentiable=False)
    assert p_norm["learn"] == pytest.approx(p_raw["learn"] / 2.302585, rel=1e-4)
    # sum of 2 learn terms + retention vs. mean of them, all divided by ln 10
    assert float(scaled) == pytest.approx((p_raw["learn"] + p_raw["retain"]) / 2.302585, rel=1e-4)
    assert float(raw) == pytest.approx(2 * p_raw["learn"] + p_raw["retain"], rel=1e-4)


def test_export_records_commit_and_flags_a_dirty_tree(tmp_path):
    """The shipped weights' provenance: HEAD and `dirty` come from git, not from memory."""
    import importlib.util
    import subprocess
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "export_default", Path(__file__).parent.parent / "experiments" / "learned_optimizer_export_default.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True, text=True).stdout
    git("init", "-q")
    (tmp_path / "a.txt").write_text("x")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = git("rev-parse", "HEAD").strip()
    assert mod.git_state(tmp_path) == (head, False)
    (tmp_path / "a.txt").write_text("changed")
    assert mod.git_state(tmp_path) == (head, True)
    with pytest.raises(MetaclError):
        mod.git_state(tmp_path / "missing")
