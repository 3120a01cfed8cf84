"""Shipped learned-optimizer weights: the default and the digits weights, each loadable by name."""

import json

import pytest
import torch

from metacl.ckl.optimizers import build_optimizer
from metacl.errors import MetaclError
from metacl.optim import LearnedOptimizer, load_optimizer, shipped_weights
from metacl.optim.learned import WEIGHTS_DIR


def _params():
    return [torch.nn.Parameter(torch.randn(4, 3))]


def test_default_and_digits_weights_are_shipped_with_their_provenance():
    assert {"default", "digits"} <= set(shipped_weights())
    for name in ("default", "digits"):
        info = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())["info"]
        assert info["command"].startswith("metacl meta-train optimizer"), name
        assert info.get("dirty") is False and info.get("git_commit"), f"{name}: exported from a clean commit"
    default = json.loads((WEIGHTS_DIR / "default.json").read_text())
    assert "--family lm2" in default["info"]["command"]  # meta-trained for LM fine-tuning (world v2 LMs, 3 sizes)
    assert default["config"]["head"] == "linear" and default["config"]["anchor_start"] is True
    assert default["info"]["git_dirty"] is False and default["info"]["train_git_commit"] == default["info"]["git_commit"]
    digits = json.loads((WEIGHTS_DIR / "digits.json").read_text())["info"]["command"]
    assert "--family" not in digits or "--family digits" in digits  # the digits family (the CLI default)


def test_weights_load_by_name_and_by_the_ckl_flag():
    a = LearnedOptimizer.pretrained(_params(), name="digits")
    b = load_optimizer("digits", _params())
    assert all(torch.equal(a.meta[k], b.meta[k]) for k in a.meta)
    c = build_optimizer("learned", _params(), lr=1e-3, path="digits", total_steps=10)
    assert all(torch.equal(a.meta[k], c.meta[k]) for k in a.meta) and c.total_steps == 10
    assert isinstance(load_optimizer(None, _params()), LearnedOptimizer)  # None: the default
    with pytest.raises(MetaclError, match="no shipped learned-optimizer weights named 'nope'; choose one of"):
        LearnedOptimizer.pretrained(_params(), name="nope")
