"""`LearnedOptimizer(anchor_lr=...)`: the pull back to the anchor at its own multiplier.

Why a knob: at deployment `lr` is tuned on tl_val, and scaling the meta-learned pull with it keeps
moving and returning in balance, so a larger `lr` buys new knowledge only slowly (lo_v2.md,
ablation `drift`). These tests pin what the knob means: None and anchor_lr == lr are the meta-trained
optimizer to the bit, and with the learning terms off the pull ignores `lr`.
"""

from __future__ import annotations

import pytest
import torch

from metacl.ckl.optimizers import build_optimizer
from metacl.errors import MetaclError
from metacl.optim import LearnedOptimizer
from metacl.optim import network as nw


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(37, 5, generator=g)), torch.nn.Parameter(torch.randn(11, generator=g))]


def _run(meta, cfg, lr, anchor_lr, steps=6, seed=0):
    ps = _params(seed)
    opt = LearnedOptimizer(ps, meta=meta, config=cfg, lr=lr, anchor_lr=anchor_lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for p in ps]


def _trained_like(cfg):
    """Meta-parameters with every coefficient in use (a drift coefficient large enough to matter)."""
    meta = nw.init_meta(cfg, seed=3)
    meta["coef.b"] = torch.tensor([0.2, 0.1, 1.0, 0.3, 5.0, 2.0, 1.0, 30.0])
    return meta


def test_default_and_equal_anchor_lr_are_the_meta_trained_step():
    cfg = nw.NetConfig(head="linear", anchor_start=True)
    meta = _trained_like(cfg)
    for lr in (0.5, 4.0):
        base = _run(meta, cfg, lr, None)
        same = _run(meta, cfg, lr, lr)
        assert all(torch.equal(a, b) for a, b in zip(base, same))
    # and the knob does change a run where the drift coefficient is non-zero
    other = _run(meta, cfg, 4.0, 1.0)
    assert not all(torch.equal(a, b) for a, b in zip(_run(meta, cfg, 4.0, None), other))


def test_pull_alone_ignores_lr_when_anchor_lr_is_set():
    """Only the drift coefficient on and zero gradients: each step is p -= anchor_lr * c * s * (p - anchor) / rms(p)."""
    cfg = nw.NetConfig(head="linear", anchor_start=True)
    meta = nw.init_meta(cfg, seed=0)
    meta["coef.w"].zero_()
    meta["coef.b"].zero_()
    meta["coef.b"][nw.DRIFT_FEATURE] = 20.0

    def moved(lr, anchor_lr):
        p = torch.nn.Parameter(torch.ones(64))
        opt = LearnedOptimizer([p], meta=meta, config=cfg, lr=lr, anchor_lr=anchor_lr)
        p.grad = torch.zeros(64)
        opt.step()  # anchors at the start; nothing to pull yet
        with torch.no_grad():
            p.add_(torch.linspace(-1, 1, 64))
        start = p.detach().clone()
        p.grad = torch.zeros(64)
        opt.step()
        return start - p.detach()

    coupled_1, coupled_8 = moved(1.0, None), moved(8.0, None)
    assert coupled_1.abs().max() > 0
    torch.testing.assert_close(coupled_8, 8 * coupled_1)           # today's pull grows with lr
    torch.testing.assert_close(moved(8.0, 1.0), coupled_1)          # with anchor_lr it does not
    torch.testing.assert_close(moved(8.0, 0.0), torch.zeros(64))    # anchor_lr 0: no pull at all
    # the pull goes back towards the anchor: every moved entry shrinks towards its start
    d = torch.linspace(-1, 1, 64)
    assert torch.all(coupled_1 * d >= 0)


def test_anchor_lr_is_refused_where_it_has_no_meaning():
    with pytest.raises(MetaclError, match="linear head"):
        LearnedOptimizer(_params(), config=nw.NetConfig(head="mlp"), anchor_lr=1.0)
    with pytest.raises(MetaclError, match="negative"):
        LearnedOptimizer(_params(), config=nw.NetConfig(head="linear"), anchor_lr=-1.0)


def test_the_ckl_factory_passes_it_through():
    opt = build_optimizer("learned", _params(), lr=1e-3, learned_lr=4.0, learned_anchor_lr=1.0)
    assert [g["anchor_lr"] for g in opt.param_groups] == [1.0]
    assert [g["lr"] for g in opt.param_groups] == [4.0]
    assert build_optimizer("learned", _params(), lr=1e-3).param_groups[0]["anchor_lr"] is None


def test_ckl_config_refuses_anchor_lr_without_the_learned_optimizer():
    from metacl.ckl.config import CklConfig

    base = dict(model="m", out="o", data="d")
    with pytest.raises(MetaclError, match="--learned-anchor-lr applies to --optimizer learned only"):
        CklConfig(**base, learned_anchor_lr=1.0).validate()
    with pytest.raises(MetaclError, match="must be >= 0"):
        CklConfig(**base, optimizer="learned", learned_anchor_lr=-1.0).validate()
    assert CklConfig(**base, optimizer="learned", learned_anchor_lr=1.0).validate().learned_anchor_lr == 1.0


def test_compiled_linear_step_applies_the_same_rescaled_pull():
    """`compile=True` takes the rescaled coefficients too: equal to the eager step to float32 rounding."""
    cfg = nw.NetConfig(head="linear", anchor_start=True)
    meta = _trained_like(cfg)

    def run(compile):
        g = torch.Generator().manual_seed(0)
        p = torch.nn.Parameter(torch.randn(300, 257, generator=g))
        opt = LearnedOptimizer([p], meta=meta, config=cfg, lr=4.0, anchor_lr=1.0, total_steps=4, compile=compile)
        for _ in range(4):
            p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        assert (opt._compiled is not None) == compile and not getattr(opt._compiled, "failed", None)
        return p.detach()

    eager, compiled = run(False), run(True)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)
