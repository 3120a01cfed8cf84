"""Meta-training tests: a short run learns something real; CLI, checkpoints, resume and ES work."""

import json

import pytest
import torch

from metacl.cli.main import main
from metacl.optim import load_meta
from metacl.optim import network as nw
from metacl.optim.baselines import tune_adamw
from metacl.optim.meta_train import MetaTrainConfig, evaluate, meta_train


# The linear head's 40-step meta-training used to diverge on this test's toys (held-out meta-loss
# 1.72 / 182 / 1.92 / 1.85 against a tuned AdamW's 1.03 / 1.02 / 1.27 / 1.84, seeds 0-3, AMD EPYC,
# 2026-12-02): the coefficients of its value, drift and importance features lived at the scale of
# the Adam-like ones, so one meta-step made them a per-step decay of ~0.1-1. With
# `network.COEF_FEATURE_SCALE` the same runs give 0.078 / 2.19 / 0.067 / 1.06 (3 of 4 seeds beat
# the tuned AdamW; the MLP head: 3 of 4 too). The test runs seed 0, for both heads.
#
# Both heads then still depended on where the last of the 40 meta-steps landed: on 2026-12-03's AMD
# EPYC (avx2, no avx512) the MLP head's last weights beat 0.9x AdamW in 3 of 6 seeds at one thread
# (seed 1: 1.71 vs 1.02). The test now meta-validates every 5 steps on AdamW's tuning stream and
# ships the best weights (MetaTrainConfig.val_every), as one tunes AdamW: 6 of 6 seeds for each head
# (docs/results/lo_toy_tuned/seeds_val5_*.json, experiments/lo_toy_seeds.py --val-every 5).


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_short_meta_training_beats_a_tuned_adamw_on_heldout_toys(tmp_path, head):
    # AdamW's lr is tuned over 4 values on validation episodes (seed stream 101), the learned optimizer
    # starts Adam-like at that lr, and both are scored on the test episodes of `evaluate` (seed 0),
    # which neither meta-training (its own per-step streams) nor the tuning saw.
    #
    # Why not the old test (untrained network at lr 1e-4 as the "poor" baseline, meta-loss < 0.6x it
    # after 25 meta-steps): from lr 1e-4 the only way to a low loss is a ~1000x larger step, but Adam on
    # log_scale (meta_lr 0.05) moves it by <= 0.05 per meta-step, so 25 steps can raise it <= e^1.25 ~ 3.5x
    # (it went 1e-4 -> 2.1e-4); the remaining factor had to come from the bounded magnitude and per-tensor
    # scale, through single-episode meta-gradients whose meta-loss swings 0.25-18 between episodes. Whether
    # it crossed 0.6x was down to that trajectory (4.05 vs 0.6 * 5.00 here, the same numbers at every
    # commit from the one that added the test, dd2d8e0, to 9d03101: not a regression, it never passed
    # in this environment), and beating a crippled optimizer says nothing about beating a tuned one.
    cfg = MetaTrainConfig(family="toy", steps=40, inner_steps=8, meta_lr=0.01, meta_batch=2,
                          eval_episodes=8, ckpt_every=100, head=head, val_every=5)
    best, table = tune_adamw(cfg, (0.03, 0.1, 0.3, 1.0), episodes=8, seed=101)
    assert 0.03 < best < 1.0, f"the grid must bracket the tuned lr: {table}"
    cfg.init_lr = cfg.baseline_lr = best
    net = nw.NetConfig(init_lr=best, head=head)
    untrained = evaluate(nw.init_meta(net, cfg.seed), net, cfg, cfg.eval_episodes, cfg.seed)
    summary = meta_train(cfg, tmp_path / "run", net=net, progress=False)
    assert summary["selected"]["step"] > 0, summary["selected"]  # validation preferred a trained optimizer
    learned, adam = summary["eval_heldout"]["learned"], summary["eval_heldout"]["adam"]
    assert adam == untrained["adam"]  # the same test episodes and the same tuned AdamW
    # the untrained network is Adam-like at the tuned lr: meta-training, not the start, must make the gap
    assert untrained["learned"]["meta_loss"] > 0.9 * adam["meta_loss"], (untrained, adam)
    assert learned["meta_loss"] < 0.9 * adam["meta_loss"], (learned, adam)
    assert learned["retain"] < adam["retain"], (learned, adam)
    # ... and not by learning less: each task's post-training loss stays within 25% of AdamW's
    assert learned["learn"] < 1.25 * adam["learn"], (learned, adam)
    meta, _, info = load_meta(tmp_path / "run")
    assert info["seed"] == 0 and "git_commit" in info


def test_cli_checkpoint_resume_and_es(tmp_path, capsys):
    out = tmp_path / "cli"
    base = ["meta-train", "optimizer", "--family", "toy", "--inner-steps", "3", "--eval-episodes", "0",
            "--ckpt-every", "1", "--no-progress", "--out", str(out)]
    assert main(base + ["--steps", "2"]) == 0
    assert main(base + ["--steps", "2"]) == 2          # refuses to overwrite a run without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(base + ["--steps", "3", "--resume"]) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]       # resumed at step 3, did not redo 1-2
    assert main(base + ["--steps", "4", "--resume", "--retention", "5"]) == 2  # settings changed
    es_out = tmp_path / "es"
    es = base[:-1] + [str(es_out), "--steps", "1", "--estimator", "es", "--es-pairs", "1"]
    assert main(es) == 0
    m0 = nw.init_meta(nw.NetConfig(init_lr=3e-3), 0)
    m1, _, _ = load_meta(es_out)
    assert any(not torch.equal(m0[k], m1[k]) for k in m0)  # the ES step moved the meta-parameters


def test_the_run_records_the_commit_it_started_from(tmp_path, monkeypatch):
    """A commit made while a meta-training runs must not be recorded as the code that trained it."""
    import metacl.optim.meta_train as mt

    commits = iter(["start-commit", "later-commit", "later-commit", "later-commit"])
    monkeypatch.setattr(mt, "_git_commit", lambda: next(commits))
    monkeypatch.setattr(mt, "_git_dirty", lambda: False)
    cfg = MetaTrainConfig(family="toy", steps=2, inner_steps=2, eval_episodes=1, ckpt_every=100)
    summary = meta_train(cfg, tmp_path / "run", progress=False)
    assert summary["git_commit"] == "start-commit" and summary["git_dirty"] is False
    _, _, info = load_meta(tmp_path / "run")
    assert info["git_commit"] == "start-commit" and info["git_dirty"] is False


def test_resume_accepts_a_run_with_tuple_settings(tmp_path):
    """coef_scale is a tuple in the config and a list in the checkpoint's JSON: resuming must not call that a change."""
    cfg = MetaTrainConfig(family="toy", steps=2, inner_steps=2, eval_episodes=0, ckpt_every=1, head="linear",
                          coef_scale=(1, 1, 1, 1, 0.01, 0.01, 0.01, 1.0))
    meta_train(cfg, tmp_path / "run", progress=False)
    cfg.steps = 3
    summary = meta_train(cfg, tmp_path / "run", resume=True, progress=False)
    assert summary["config"]["steps"] == 3


def test_init_from_starts_where_the_given_weights_are(tmp_path):
    """--init-from: a 0-step run exports exactly the weights it started from (a run dir, or the shipped
    default by name); weights of another network config are refused with the differing keys named."""
    cfg = MetaTrainConfig(family="toy", steps=2, inner_steps=2, eval_episodes=0, ckpt_every=100, head="linear",
                          init_lr=1e-3, anchor_start=True)
    meta_train(cfg, tmp_path / "a", progress=False)
    first, _, _ = load_meta(tmp_path / "a")
    fresh = nw.init_meta(nw.NetConfig(head="linear", init_lr=1e-3, anchor_start=True), 0)
    assert any(not torch.equal(first[k], fresh[k]) for k in first)  # two meta-steps moved the weights
    again = MetaTrainConfig(**{**cfg.__dict__, "steps": 0, "init_from": str(tmp_path / "a")})
    meta_train(again, tmp_path / "b", progress=False)
    second, _, _ = load_meta(tmp_path / "b")
    assert all(torch.equal(first[k], second[k]) for k in first)
    shipped, shipped_cfg, _ = load_meta(nw.__file__.rsplit("/", 1)[0] + "/weights", stem="default")
    named = MetaTrainConfig(**{**cfg.__dict__, "steps": 0, "init_from": "default",
                               "coef_scale": shipped_cfg.coef_scale})
    meta_train(named, tmp_path / "c", progress=False)
    third, _, _ = load_meta(tmp_path / "c")
    assert all(torch.equal(shipped[k], third[k]) for k in shipped)
    other = MetaTrainConfig(**{**cfg.__dict__, "steps": 0, "init_from": str(tmp_path / "a"), "anchor_start": False})
    with pytest.raises(Exception, match="anchor_start"):
        meta_train(other, tmp_path / "d", progress=False)


def test_meta_validation_ships_the_best_weights_and_survives_resume(tmp_path, capsys):
    """--val-every: the shipped weights are the validated best (not the last), the choice is recorded, an
    interrupted run resumed keeps the best it had found, and the test stream cannot be the validation one."""
    cfg = MetaTrainConfig(family="toy", steps=4, inner_steps=2, eval_episodes=1, ckpt_every=1, val_every=2,
                          val_episodes=2, meta_lr=0.05)
    full = meta_train(cfg, tmp_path / "full", progress=False)
    rows = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["meta_loss"] for r in rows if r.get("kind") == "val"}
    assert sorted(val) == [0, 2, 4]                       # the untrained start is a candidate too
    best_step = min(val, key=val.get)
    assert full["selected"] == {"by": "meta-validation", "step": best_step, "last_step": 4,
                                "val": full["selected"]["val"]} and full["selected"]["val"]["step"] == best_step
    shipped, net, info = load_meta(tmp_path / "full")
    assert info["selected"]["step"] == best_step
    again = evaluate(shipped, net, cfg, cfg.val_episodes, cfg.val_seed, which=("learned",))["learned"]["meta_loss"]
    assert again == pytest.approx(val[best_step], rel=1e-6)  # what ships is what scored best
    half = MetaTrainConfig(**{**cfg.__dict__, "steps": 2})
    meta_train(half, tmp_path / "half", progress=False)
    resumed = meta_train(cfg, tmp_path / "half", resume=True, progress=False)
    assert resumed["selected"] == full["selected"]
    assert all(torch.equal(shipped[k], load_meta(tmp_path / "half")[0][k]) for k in shipped)
    base = ["meta-train", "optimizer", "--family", "toy", "--steps", "1", "--inner-steps", "2", "--no-progress"]
    assert main(base + ["--val-every", "1", "--val-seed", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--val-seed 0" in capsys.readouterr().err and not (tmp_path / "bad").exists()
