"""`best/` must never silently be the untrained weighter: last-step validation and the step-0 warning."""

from __future__ import annotations

import json
import random

import pytest
import torch

from metacl.meta.train_token_weighting import MetaConfig, MetaExample, MetaTrainer
from metacl.models.loading import load_model_and_tokenizer
from metacl.models.pretrain import tiny_model_for_tests


@pytest.fixture(scope="module")
def world_and_lm(tmp_path_factory):
    from metacl.data.world import write_world

    root = tmp_path_factory.mktemp("bw")
    write_world(root / "world", 20, seed=0)
    texts = [json.loads(l)["text"] for l in (root / "world" / "pretrain_corpus.jsonl").read_text().splitlines()[:200]]
    return root / "world", tiny_model_for_tests(root / "lm", texts=texts, vocab_size=360)


def _examples(n=6):
    rng = random.Random(0)
    words = "apple river stone cloud paper window garden".split()
    return [MetaExample(" ".join(rng.sample(words, 5)) + " key red .", "key", "red") for _ in range(n)]


@pytest.mark.parametrize("sign, warned", [(-1, True), (1, False)])
def test_warning_only_when_best_is_step_0(world_and_lm, tmp_path, sign, warned):
    """A validator whose score falls (rises) with the step: best is step 0 (the last step) -> warned (not)."""
    _, lm = world_and_lm
    model, tok = load_model_and_tokenizer(lm)
    seen = []

    def validate(weighter, path):
        step = json.loads((path / "token_weighter.json").read_text())["meta_step"]
        seen.append(step)
        return {"score": sign * float(step)}

    cfg = MetaConfig(inner_steps=1, inner_optimizer="sgd", meta_batch=2, steps=3, val_every=10, max_length=32)
    torch.manual_seed(0)
    res = MetaTrainer(model, tok, _examples(), tmp_path / "run", cfg, validate=validate, progress=False).run()
    assert seen == [0, 3], "validation at step 0 and at the last step, although --val-every > --steps"
    assert res["best"]["step"] == (0 if warned else 3)
    assert res["best_is_untrained"] is warned
    assert len(res["warnings"]) == int(warned)
    if warned:
        assert "step-0" in res["warnings"][0] and "\n" not in res["warnings"][0]


def test_cli_steps_below_val_every_validates_last_step_and_warns(world_and_lm, tmp_path, capsys):
    """--steps 2 --val-every 5: validations at steps 0 and 2; a weighter that cannot move keeps best = step 0,
    which the command says in one stderr line and records in summary.json."""
    from metacl.cli.main import main

    world, lm = world_and_lm
    out = tmp_path / "tw"
    rc = main(["meta-train", "token-weighting", "--model", str(lm), "--data", str(world), "--out", str(out),
               "--steps", "2", "--val-every", "5", "--meta-batch", "2", "--val-epochs", "1", "--val-items", "4",
               "--max-length", "64", "--outer-lr", "1e-30", "--device", "cpu"])
    assert rc == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("kind") == "val"] == [0, 2]
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("metacl: warning:")]
    assert len(err) == 1 and "untrained step-0 weighter" in err[0], err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_is_untrained"] is True and summary["best"]["step"] == 0
    assert summary["warnings"] == [err[0][len("metacl: warning: "):]]
