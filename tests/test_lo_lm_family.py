"""The `lm` optimizee family (metacl/optim/lm_family.py): episodes, meta-gradient, a real learning signal.

Everything is shrunk (a 40-entity world, one 2-layer d=32 Llama pretrained for 30 steps, 4-step
tasks) so the file runs in seconds; the family itself is unchanged.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch

from metacl.optim import lm_family as lf
from metacl.optim import network as nw
from metacl.optim.functional import LearnedFunctional
from metacl.optim.meta_train import FAMILIES, MetaTrainConfig, episode_loss, evaluate, meta_train

SMALL = replace(lf.LM, entities=40, vocab_size=320, hidden_sizes=(32,), pretrain_steps=30, block_size=64,
                docs_per_task=4, batch_docs=2, old_probes=4)


@pytest.fixture(autouse=True)
def small_family(monkeypatch):
    monkeypatch.setattr(lf, "LM", SMALL)


def _cfg(**kw) -> MetaTrainConfig:
    base = dict(family="lm", steps=0, inner_steps=4, tasks_per_episode=2, eval_episodes=0, seed=0)
    return MetaTrainConfig(**(base | kw))


def test_lm_episode_builds_documents_and_object_only_probes():
    assert FAMILIES["lm"] is lf.lm_episode and "digits+lm" in FAMILIES
    cfg = _cfg()
    ep = FAMILIES["lm"](random.Random(3), cfg, "meta")
    _, tok, pre_loss = lf.base_lm(32)
    assert pre_loss < 5.0  # the base LM did learn something of the old world (ln 320 = 5.77 at random)
    assert len(ep.tasks) == 2
    seen = set()
    for train, (new, old) in ep.tasks:
        assert len(train) == cfg.inner_steps
        assert all(b["input_ids"].shape[0] <= SMALL.batch_docs for b in train)
        # held-out labels sit on the object tokens only: they decode to the probe's object
        for i in range(new["input_ids"].shape[0]):
            ids = new["labels"][i][new["labels"][i] != -100]
            assert 0 < len(ids) < int(new["attention_mask"][i].sum())
            obj = tok.decode(ids).strip()
            assert obj and obj in tok.decode(new["input_ids"][i])
        seen |= {tok.decode(b["input_ids"][0]) for b in train}
        assert old["input_ids"].shape[0] == SMALL.old_probes
    # different tasks learn different documents; the pools are disjoint people
    assert len(seen) > 1
    meta = lf._world(SMALL)
    assert {r["subject"] for r in meta["meta_train"]}.isdisjoint({r["subject"] for r in meta["meta_val"]})
    # the episode starts from a copy: training it never touches the cached base model
    before = {k: v.clone() for k, v in ep.params.items()}
    episode_loss(ep, LearnedFunctional(nw.init_meta(nw.NetConfig(), 0), nw.NetConfig(), total_steps=4), cfg,
                 differentiable=False)
    _, state, _ = lf._base_state(32, SMALL)
    assert all(torch.equal(before[k], state[k]) for k in state)


def test_meta_gradient_reaches_optimizer_through_an_lm_episode():
    cfg = _cfg()
    ep = lf.lm_episode(random.Random(0), cfg)
    net = nw.NetConfig(init_lr=1e-3)
    meta = {k: v.requires_grad_(True) for k, v in nw.init_meta(net, 0).items()}
    loss, parts = episode_loss(ep, LearnedFunctional(meta, net, total_steps=cfg.inner_steps), cfg)
    assert torch.isfinite(loss) and parts["learn"] > 0 and parts["retain"] > 0
    loss.backward()
    got = {k: v.grad for k, v in meta.items() if v.grad is not None}
    assert "log_scale" in got and float(got["log_scale"].abs().sum()) > 0
    nonzero = [k for k, g in got.items() if torch.isfinite(g).all() and float(g.abs().sum()) > 0]
    # the step size, the per-parameter MLP and the tensor-level transformer all receive signal
    assert any(k.startswith("layer") for k in nonzero) and len(nonzero) >= len(meta) // 2, sorted(nonzero)


def test_primed_episode_gives_the_pull_a_meta_gradient():
    """--prime-batches: the episode carries the base LM's old importance (mean |grad * p| on its pre-training
    text), the optimizer is primed with it before task 1, and the importance pull gets a meta-gradient."""
    cfg = _cfg(head="linear", anchor_start=True, imp_pull=True, prime_batches=2)
    ep = lf.lm_episode(random.Random(0), cfg)
    assert ep.old_importance is not None and set(ep.old_importance) == set(ep.params)
    assert all(float(v.min()) >= 0 for v in ep.old_importance.values())
    assert sum(float(v.sum()) for v in ep.old_importance.values()) > 0
    assert lf.lm_episode(random.Random(0), _cfg()).old_importance is None   # off by default
    net = nw.NetConfig(init_lr=1e-3, head="linear", anchor_start=True, imp_pull=True)
    meta = {k: v.requires_grad_(True) for k, v in nw.init_meta(net, 0).items()}
    loss, _ = episode_loss(ep, LearnedFunctional(meta, net, total_steps=cfg.inner_steps), cfg)
    loss.backward()
    assert float(meta["pull.b"].grad.abs()) > 0


def test_short_lm_meta_training_beats_a_poor_fixed_optimizer_on_heldout_episodes(tmp_path):
    # The poor optimizer is the untrained (Adam-like) network with a far too large step, 3e-2: on a
    # pretrained LM it overwrites the old world and learns nothing useful (AdamW 3e-2 vs 1e-3 roughly
    # doubles the meta-loss). A few meta-steps must find a better step: if the meta-gradient were
    # wrong, absent or not applied, the held-out meta-loss (new facts' object NLL + old-world
    # object NLL, on fresh episodes) would not drop.
    cfg = _cfg(steps=6, init_lr=3e-2, meta_lr=0.15, eval_episodes=2)
    net = nw.NetConfig(init_lr=3e-2)
    poor = evaluate(nw.init_meta(net, cfg.seed), net, cfg, cfg.eval_episodes, cfg.seed)["learned"]
    summary = meta_train(cfg, tmp_path / "run", progress=False)
    learned = summary["eval_heldout"]["learned"]
    assert learned["meta_loss"] < poor["meta_loss"] - 1.0, (learned, poor)
    assert learned["learn"] < poor["learn"] and learned["retain"] < poor["retain"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[-1]["lr"] < 3e-2 and not any(r["skipped"] for r in rows)


def test_mixed_family_draws_both_kinds():
    cfg = _cfg()
    kinds = []
    for seed in range(4):  # first draws 0.84, 0.13, 0.96, 0.24: digits, lm, digits, lm
        ep = FAMILIES["digits+lm"](random.Random(seed), cfg, "meta")
        kinds.append("lm" if isinstance(ep.tasks[0][0][0], dict) else "digits")
    assert kinds == ["digits", "lm", "digits", "lm"]


def test_lm2_family_learns_world_v2_documents(monkeypatch):
    # `lm2` is the same family on a world v2 of its own seed: documents carry hard sentences around the
    # fact, probes score the object tokens only, and its world is none of the tables' worlds (seeds 0, 1)
    small2 = replace(lf.LM2, entities=40, vocab_size=320, hidden_sizes=(32,), pretrain_steps=30,
                     docs_per_task=4, batch_docs=2, old_probes=4)
    monkeypatch.setattr(lf, "LM2", small2)
    assert FAMILIES["lm2"] is lf.lm2_episode and lf.LM2.world == "v2" and lf.LM2.world_seed not in (0, 1)
    ep = FAMILIES["lm2"](random.Random(0), _cfg(family="lm2"), "meta")
    world = lf._world(small2)
    assert all(r.get("world_version") == 2 for r in world["meta_train"])
    _, tok, _ = lf.base_lm(32, small2)
    docs = {r["evidence"] for r in world["meta_train"]}
    for train, (new, _old) in ep.tasks:
        text = tok.decode(train[0]["input_ids"][0], skip_special_tokens=True)
        assert any(text.strip()[:40] in d for d in docs)  # a whole v2 document, not a v1 one
        assert (new["labels"] != -100).any()
    # one differentiable episode: the meta-gradient reaches the network
    net = nw.NetConfig(init_lr=1e-3, head="linear")
    meta = {k: v.requires_grad_(True) for k, v in nw.init_meta(net, 0).items()}
    loss, _ = episode_loss(ep, LearnedFunctional(meta, net, total_steps=4), _cfg(family="lm2"))
    loss.backward()
    assert torch.isfinite(loss) and meta["coef.b"].grad.abs().sum() > 0
