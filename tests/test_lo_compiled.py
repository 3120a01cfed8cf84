"""`LearnedOptimizer(compile=True)`: the compiled step (MLP head; linear head) takes the eager step's
numbers (to float32 rounding) before and after `consolidate()`, and a failing compile falls back cleanly."""

import warnings

import pytest
import torch
from torch import nn

from metacl.optim import LearnedOptimizer, NetConfig, init_meta
from metacl.optim import compiled as co


def _meta(head="mlp"):
    cfg = NetConfig(hidden=4, d_model=8, n_heads=2, n_layers=1, init_lr=1e-2, head=head)  # small graph: quick to compile
    meta = init_meta(cfg, 2)
    g = torch.Generator().manual_seed(2)
    for k in meta:  # away from the Adam-like start, so every feature's coefficient matters
        meta[k] = meta[k] + torch.randn(meta[k].shape, generator=g) * 0.3
    return meta, cfg


def _pair(head="mlp", **kw):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 2))
    b = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 2))
    b.load_state_dict(a.state_dict())
    meta, cfg = _meta(head)
    return a, b, LearnedOptimizer(a.parameters(), meta=meta, config=cfg, **kw), \
        LearnedOptimizer(b.parameters(), meta=meta, config=cfg, compile=True, **kw)


def _step(models, opts, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)
    for m, o in zip(models, opts):
        o.zero_grad()
        (m(x) - y).pow(2).mean().backward()
        o.step()


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_compiled_step_matches_eager_across_consolidate(head):
    a, b, oa, ob = _pair(head, total_steps=5)
    start = [p.detach().clone() for p in a.parameters()]
    for step in range(5):
        _step((a, b), (oa, ob), step)
        if step == 1:
            oa.consolidate()
            ob.consolidate()
    assert ob._compiled.failed is None, ob._compiled.failed  # it really ran compiled
    for p, q, s in zip(a.parameters(), b.parameters(), start):
        assert (p - s).abs().max() > 1e-3, "the comparison would be vacuous"
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_a_failing_compile_warns_once_and_takes_the_eager_step(monkeypatch, head):
    def broken(*a, **k):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(co.torch, "compile", broken)
    a, b, oa, ob = _pair(head, total_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            _step((a, b), (oa, ob), step)
    assert sum("torch.compile failed" in str(w.message) for w in caught) == 1
    assert "no C++ compiler" in ob._compiled.failed
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)  # the eager path exactly
