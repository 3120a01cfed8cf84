"""Baselines I through the real training loop (`metacl.ckl.train.train_task`) and protocol.

Why: the hook-level tests check each mechanism in isolation; here every strategy runs inside
the loop that composes them, on a real (tiny, random) HF model with its BPE tokenizer, so a
strategy that breaks the loop's contract (shapes, device, optimizer built after before_task,
NCL replacing the optimizer step) fails here.
"""

from __future__ import annotations

import math

import pytest
import torch

from metacl.ckl.train import train_task
from metacl.models.loading import load_model_and_tokenizer
from metacl.models.pretrain import tiny_model_for_tests
from metacl.strategies import get_strategy
from metacl.strategies.base import TrainContext

DOCS = ["Ada Quill works for Northwind Labs in the city of Port Avery.",
        "Marco Vell was born in Lisbon and plays the violin.",
        "The novel Silent Harbor was written by Ada Quill in 1998.",
        "Paris is the capital of France. Rome is the capital of Italy."]
OLD = ["Tokens with a leading space differ from tokens without one.",
       "Rome is the capital of Italy.", "Marco Vell plays the violin."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_for_tests(tmp_path_factory.mktemp("tiny_lm"), texts=DOCS + OLD, seed=0)


def run(model_dir, names, options=None, epochs=1):
    import argparse

    model, tok = load_model_and_tokenizer(model_dir, device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    strategies = []
    for n in names:
        cls = get_strategy(n)
        p = argparse.ArgumentParser()
        cls.add_args(p)
        ns = p.parse_args([])
        for k, v in (options or {}).items():
            setattr(ns, k, v)
        strategies.append(cls.from_args(ns))
    ctx = TrainContext(model=model, tokenizer=tok, device=torch.device("cpu"), train_docs=DOCS, old_corpus=OLD,
                       seen_docs=["An earlier task document about Port Avery."], batch_size=2, max_length=32,
                       generator=torch.Generator().manual_seed(0))
    stats = train_task(ctx, strategies, epochs, lambda ps: torch.optim.AdamW(ps, lr=1e-2), progress=False)
    return ctx, before, stats


@pytest.mark.parametrize("name", ["ewc", "lwf", "replay", "agem", "ncl", "mix_review", "recadam", "rho1"])
def test_strategy_trains_through_the_loop(model_dir, name):
    ctx, before, stats = run(model_dir, [name], {"ewc_fisher_docs": 2, "ncl_fisher_docs": 2})
    assert stats["steps"] >= 2 and stats["skipped_steps"] == 0
    assert all(math.isfinite(x) for x in stats["losses"])
    moved = sum(float((p.detach() - before[n]).abs().sum()) for n, p in ctx.model.named_parameters())
    assert moved > 0


def test_k_adapter_through_the_loop_keeps_base_bit_for_bit(model_dir):
    ctx, before, stats = run(model_dir, ["k_adapter"], {"k_adapter_rank": 4})
    named = dict(ctx.model.named_parameters())
    for n, p in before.items():
        torch.testing.assert_close(named["base." + n].detach(), p, rtol=0, atol=0)
    assert float(named["fuse.weight"].detach().abs().sum()) > 0   # the zero-initialised output map learned


def test_composition_token_weights_and_gradient_edits(model_dir):
    """rho1 (token weights) + recadam (gradient edit) + ewc/lwf (extra losses) + replay (batch) at once."""
    ctx, before, stats = run(model_dir, ["replay", "rho1", "ewc", "lwf", "recadam"], {"ewc_fisher_docs": 2})
    assert stats["steps"] >= 2 and all(math.isfinite(x) for x in stats["losses"])
    assert 0 < ctx.scratch["rho1"]["selected_fraction"] <= 1
    assert 0 < ctx.scratch["recadam"]["lambda"] < 1


def test_icl_through_the_protocol_changes_no_weight_and_reports_cost(tmp_path, model_dir):
    from metacl.ckl.config import CklConfig
    from metacl.ckl.protocol import run_ckl
    from metacl.data.world import write_world

    write_world(tmp_path / "world", n_entities=20, seed=0)
    cfg = CklConfig(model=str(model_dir), out=str(tmp_path / "run"), data=str(tmp_path / "world"),
                    strategies=["icl"], epochs=1, max_items=4, exact_match=False, device="cpu", progress=False,
                    max_length=64)
    summary = run_ckl(cfg, log=lambda s: None)
    import json

    rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [0]  # one evaluation, no training
    # the prompt holds a document, so it is much longer than a bare probe
    assert rows[0]["tl_prompt_tokens"] > 10 and rows[0]["tl_seconds_per_query"] > 0
    assert summary["name"] == "icl"
