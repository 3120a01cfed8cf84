"""The plasticity term of the meta-objective (`metacl.optim.plasticity`, `MetaTrainConfig.plasticity`)."""

import json
import random
from dataclasses import replace

import pytest
import torch

from metacl.engine import adamw
from metacl.errors import MetaclError
from metacl.optim import LearnedFunctional
from metacl.optim import network as nw
from metacl.optim import plasticity as pl
from metacl.optim.meta_train import MetaTrainConfig, episode_loss, meta_train, toy_episode


def test_penalty_charges_only_the_shortfall_and_only_the_learned_side():
    tl = [torch.tensor(0.5, requires_grad=True), torch.tensor(2.0, requires_grad=True)]
    ref = [torch.tensor(1.0, requires_grad=True), torch.tensor(1.0, requires_grad=True)]
    h = pl.penalty(tl, ref, "hinge")
    assert float(h.detach()) == pytest.approx(1.0)  # task 0 learned more than AdamW: free; task 1: 2 - 1
    h.backward()
    assert float(tl[0].grad) == 0.0 and float(tl[1].grad) == 1.0
    assert ref[0].grad is None and ref[1].grad is None  # the reference is a constant
    r = pl.penalty([torch.tensor(3.0)], [torch.tensor(2.0)], "ratio")
    assert float(r) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="form"):
        pl.penalty(tl, ref, "max")


def _cfg(**kw):
    return MetaTrainConfig(family="toy", inner_steps=8, tasks_per_episode=2, baseline_lr=0.3, **kw)


def test_adamw_itself_pays_nothing_and_a_standing_still_optimizer_pays():
    cfg = _cfg(plasticity=1.0, plasticity_lr=0.3)
    ep = toy_episode(random.Random(3), cfg)
    _, parts = episode_loss(ep, adamw(lr=0.3), cfg, differentiable=False)
    assert parts["plasticity_gap"] == 0.0  # the reference run is the same AdamW on the same episode

    net = nw.NetConfig(init_lr=1e-5)  # Adam-like but ~30,000x too small a step: learns nothing
    meta = {k: v.requires_grad_(True) for k, v in nw.init_meta(net).items()}
    loss_on, parts_on = episode_loss(ep, LearnedFunctional(meta, net, total_steps=8), cfg)
    loss_off, parts_off = episode_loss(ep, LearnedFunctional(meta, net, total_steps=8), replace(cfg, plasticity=0.0))
    assert parts_on["plasticity_gap"] > 0.1
    assert float(loss_on.detach()) == pytest.approx(float(loss_off.detach()) + parts_on["plasticity_gap"], rel=1e-5)
    # retention alone rewards the frozen optimizer (its old-task loss cannot get worse); the plasticity
    # term pulls the other way: its meta-gradient asks for a larger step
    (loss_on - loss_off).backward()
    assert float(meta["log_scale"].grad) < 0


def test_reference_run_is_cached_per_lr():
    cfg = _cfg(plasticity=1.0, plasticity_lr=0.1)
    ep = toy_episode(random.Random(4), cfg)
    a = pl.reference_tl(ep, cfg)
    assert pl.reference_tl(ep, cfg) is a
    b = pl.reference_tl(ep, replace(cfg, plasticity_lr=0.3))
    assert b is not a and len(b) == len(a) == 2


def test_meta_training_with_plasticity_logs_the_gap_and_bad_settings_fail_clearly(tmp_path):
    cfg = _cfg(steps=3, plasticity=2.0, plasticity_form="ratio", plasticity_lr=0.3, eval_episodes=0, init_lr=1e-3)
    meta_train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["plasticity_gap"] > 0 for r in rows), rows  # lr 1e-3 learns less than 0.3
    for bad in (dict(plasticity=-1.0), dict(plasticity_form="max"), dict(plasticity_lr=0.0)):
        with pytest.raises(MetaclError, match="plasticity"):
            _cfg(**bad).check()


def test_cli_trains_the_linear_head_with_plasticity(tmp_path, capsys):
    from metacl.cli.main import main
    from metacl.optim import load_meta

    out = tmp_path / "run"
    base = ["meta-train", "optimizer", "--family", "toy", "--inner-steps", "3", "--eval-episodes", "1",
            "--ckpt-every", "1", "--no-progress", "--out", str(out), "--head", "linear",
            "--plasticity", "0.5", "--plasticity-form", "ratio", "--plasticity-lr", "0.1"]
    assert main(base + ["--steps", "2"]) == 0
    meta, net, _ = load_meta(out)
    assert net.head == "linear" and "coef.w" in meta and "mlp1.w" not in meta
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("plasticity_gap" in r for r in rows)
    capsys.readouterr()
    flags = base[base.index("--plasticity"):]  # keep the plasticity settings, change only the head
    assert main(base[:base.index("--head")] + flags + ["--head", "mlp", "--steps", "3", "--resume"]) == 2
    assert "head" in capsys.readouterr().err
