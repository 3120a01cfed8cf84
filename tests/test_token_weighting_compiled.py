"""`meta-train token-weighting --compile` (issue 18): meta_objective's compiled path is the eager one.

The compiler's own numerics are checked at the engine level (tests/test_compiled_unroll.py:
inductor, float64, a plain-PyTorch LM, equal to `unroll`). Here the whole meta-objective runs on
an HF Llama under the `aot_eager` backend: the same captured graph (inner gradients by
`torch.func.grad`, one differentiation of the whole), run by eager kernels, so the float32
rounding HF Llama does inside a float64 model (RMSNorm, rotary, softmax) is the same on both
paths. They still differ by float32-level rounding (~1e-7 relative in the loss: HF's float32
islands are evaluated in another order), which AdamW's near-sign inner step amplifies in the
meta-gradient; so the test also shows its tolerance is tight: a 1% change of the inner learning
rate moves the meta-gradient several times further than compiling does.
"""

from __future__ import annotations

import pytest
import torch

from engine_fixtures import rel_err, untied_toy_lm

DT = torch.float64


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model, tok = untied_toy_lm(tmp_path_factory.mktemp("toylm"), DT)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


def grads(tw, model, tok, ex, cfg, probes):
    from metacl.meta.train_token_weighting import meta_objective

    tw.zero_grad()
    out = meta_objective(tw, model, tok, ex, cfg, probes)
    out["loss"].backward()
    return out, [p.grad.clone() for p in tw.parameters()]


@pytest.fixture
def aot_eager(monkeypatch):
    from metacl.engine import compiled_unroll
    from metacl.meta import train_token_weighting

    monkeypatch.setattr(compiled_unroll, "BACKEND", "aot_eager")
    monkeypatch.setattr(train_token_weighting, "_COMPILED", {})  # no function compiled by another backend


def test_compiled_meta_objective_equals_eager(toy, aot_eager):
    from dataclasses import replace

    from metacl.errors import MetaclError
    from metacl.meta.token_weighting import TokenWeighter
    from metacl.meta.train_token_weighting import MetaConfig, MetaExample, meta_objective

    model, tok = toy
    torch.manual_seed(0)
    tw = TokenWeighter.from_base_lm(model, tok).to(DT)
    with torch.no_grad():
        tw.head.weight.normal_(0, 0.3)
        tw.head.bias.zero_()
    ex = [MetaExample("apple river key red stone cloud.", "key", "red"),
          MetaExample("paper key blue window garden.", "key", "blue")]
    probes = [("apple", "river"), ("stone", "cloud"), ("paper", "window")]  # the second example gets 1 of 2
    cfg = MetaConfig(inner_steps=2, inner_lr=0.05, retention=0.5, retention_probes=2, meta_batch=2, max_length=24)
    eager, g_eager = grads(tw, model, tok, ex, cfg, probes)
    comp, g_comp = grads(tw, model, tok, ex, replace(cfg, compile=True), probes)
    for k in ("loss", "query_nll", "retention_nll", "mean_weight"):
        assert abs(float(comp[k] - eager[k])) <= 1e-6 * abs(float(eager[k])), k
    assert float(sum(g.abs().sum() for g in g_eager)) > 0
    err = rel_err(g_comp, g_eager)
    _, g_moved = grads(tw, model, tok, ex, replace(cfg, inner_lr=0.0505), probes)
    print(f"compiled vs eager meta-gradient: {err:.2e}; inner lr +1%: {rel_err(g_moved, g_eager):.2e}")
    assert err < 1e-2 and 5 * err < rel_err(g_moved, g_eager)
    with pytest.raises(MetaclError, match="truncate"):
        meta_objective(tw, model, tok, ex, replace(cfg, compile=True, truncate=1), probes)


def test_compile_is_not_part_of_a_runs_identity():
    from dataclasses import replace

    from metacl.meta.train_token_weighting import MetaConfig

    assert MetaConfig().identity() == replace(MetaConfig(), compile=True).identity()
