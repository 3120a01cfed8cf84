"""Meta-training tests: a short run learns something real; CLI, checkpoints, resume and ES work."""

import json

import pytest
import torch

from metacl.cli.main import main
from metacl.optim import load_meta
from metacl.optim import network as nw
from metacl.optim.meta_train import MetaTrainConfig, evaluate, meta_train


pytestmark = pytest.mark.usefixtures("one_thread")


def test_short_meta_training_beats_a_poor_fixed_optimizer_on_heldout_toys(tmp_path):
    # The "poor" optimizer is the untrained network with a tiny step (1e-4): Adam-like but far
    # too slow for 8 steps per task. Meta-training must find better updates from the meta-loss
    # alone; evaluation uses held-out episodes (different seeds from training).
    cfg = MetaTrainConfig(family="toy", steps=25, inner_steps=8, init_lr=1e-4, meta_lr=0.05,
                          eval_episodes=4, ckpt_every=100)
    net = nw.NetConfig(init_lr=1e-4)
    poor = evaluate(nw.init_meta(net, cfg.seed), net, cfg, cfg.eval_episodes, cfg.seed)["learned"]
    summary = meta_train(cfg, tmp_path / "run", net=net, progress=False)
    learned = summary["eval_heldout"]["learned"]
    assert learned["meta_loss"] < 0.6 * poor["meta_loss"], (learned, poor)
    assert learned["retain"] < poor["retain"]
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
