"""The learned optimizer's importance-weighted pull (`NetConfig(imp_pull=True)`) and `prime()`.

The pull is p -= rho_T * pull_ratio(old importance) * (p - anchor) after each step, rho_T from the
transformer; `prime` measures the old importance on old data before training. Checked here: the
deployment step equals the meta-training step, the pull holds important weights more than others
and does not scale with lr, priming is the mean |grad * p| folded like a finished task, and the
meta-gradient reaches the pull's parameters.
"""

import pytest
import torch
from torch import nn

from metacl.engine import unroll
from metacl.errors import MetaclError
from metacl.optim import LearnedFunctional, LearnedOptimizer, NetConfig, init_meta
from metacl.optim import features as fe
from metacl.optim import network as nw


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 6, generator=g)
    return x, torch.sin(x[:, :1]) + x[:, 1:2]


def _loss(model, x, y):
    return (model(x) - y).pow(2).mean()


def _meta(seed=3, pull_logit=0.0):
    cfg = NetConfig(init_lr=1e-2, head="linear", anchor_start=True, imp_pull=True)
    meta = init_meta(cfg, seed)
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor(nw.COEF_FEATURE_SCALE)
    meta["coef.w"] = torch.randn(meta["coef.w"].shape, generator=g) * 0.3 / scale
    meta["coef.b"] = torch.randn(meta["coef.b"].shape, generator=g) * 0.5 / scale
    meta["pull.w"] = torch.randn(meta["pull.w"].shape, generator=g)
    meta["pull.b"] = torch.tensor(pull_logit)
    return meta, cfg


def _model(seed=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))


def _old_batches():
    return [_data(100 + i) for i in range(3)]


def test_primed_pull_step_matches_the_functional_meta_training_step():
    meta, cfg = _meta()
    model = _model()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = LearnedOptimizer(model.parameters(), meta=meta, config=cfg, total_steps=5, chunk_size=7)
    assert opt.prime([lambda b=b: _loss(model, *b) for b in _old_batches()]) == 3
    assert all(p.grad is None for p in model.parameters())
    # the functional twin, primed with the same mean |grad * p|
    imp = {k: torch.zeros_like(v) for k, v in params.items()}
    for b in _old_batches():
        model.zero_grad()
        _loss(model, *b).backward()
        for k, v in model.named_parameters():
            imp[k] += (v.grad * v.detach()).abs() / 3
    f = LearnedFunctional(meta, cfg, total_steps=5)
    state = f.prime(params, f.init(params), imp)
    for k, v in model.named_parameters():
        torch.testing.assert_close(opt.state[v]["imp_prev"], state["tensors"][k]["imp_prev"], rtol=0, atol=1e-6)
        if v.numel() > 1:   # min-max folded, as consolidate does (a 1-element tensor's is 0)
            assert float(opt.state[v]["imp_prev"].max()) == pytest.approx(1.0)
    moved = 0.0
    for step in range(5):
        x, y = _data(10 + step)
        model.zero_grad()
        _loss(model, x, y).backward()
        grads = {k: v.grad.clone() for k, v in model.named_parameters()}
        opt.step()
        params, state = f.update(params, grads, state, step)
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), params[k], rtol=0, atol=1e-6)
        moved = max(moved, float((v.detach() - opt.state[v]["anchor"]).abs().max()))
    assert moved > 1e-3


def test_pull_holds_important_weights_and_ignores_lr():
    """With every learning coefficient 0 the step is the pull alone: each weight returns towards the
    anchor by rho * imp / (imp + mean(imp)) of its distance, the same at lr 1 and lr 8."""
    meta, cfg = _meta(pull_logit=2.0)
    meta["coef.w"].zero_()
    meta["coef.b"].zero_()
    meta["pull.w"].zero_()
    rho = nw.PULL_MAX * torch.sigmoid(torch.tensor(2.0))
    out = {}
    for lr in (1.0, 8.0):
        model = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[1.0, 2.0, -1.0, 0.5]]))
        opt = LearnedOptimizer(model.parameters(), meta=meta, config=cfg, lr=lr)
        x = torch.tensor([[1.0, 0.1, 0.0, 0.0]])  # old data: the first weight matters most, the last two not at all
        opt.prime([lambda: model(x).sum()])
        anchor = model.weight.detach().clone()
        with torch.no_grad():
            model.weight.add_(1.0)   # the new task moved every weight by 1
        model.weight.grad = torch.zeros_like(model.weight)
        opt.step()
        out[lr] = model.weight.detach().clone()
        imp = opt.state[model.weight]["imp_prev"]
        want = anchor + 1.0 - rho * imp / (imp + imp.mean()) * 1.0
        torch.testing.assert_close(out[lr], want, rtol=0, atol=1e-6)
        back = (anchor + 1.0 - out[lr]).flatten()
        assert back[0] > back[1] > 0 and back[2] == 0 and back[3] == 0
    torch.testing.assert_close(out[1.0], out[8.0], rtol=0, atol=0)


def test_meta_gradient_reaches_the_pull():
    meta, cfg = _meta()
    meta = {k: v.clone().requires_grad_(True) for k, v in meta.items()}
    net = _model()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    loss_fn = lambda m, p, b: (torch.func.functional_call(m, p, (b[0],)) - b[1]).pow(2).mean()
    imp = {k: torch.rand_like(v) for k, v in params.items()}
    f = LearnedFunctional(meta, cfg, total_steps=4)
    st = f.prime(params, f.init(params), imp)
    pK, _ = unroll(net, params, loss_fn, [_data(s) for s in range(4)], optimizer=f, first_order=True, state=st)
    loss_fn(net, pK, _data(9)).backward()
    assert float(meta["pull.b"].grad.abs()) > 0 and float(meta["pull.w"].grad.abs().sum()) > 0


def test_weights_without_imp_pull_take_the_same_step_as_before():
    """A config without imp_pull ignores pull meta-parameters (none are created) and steps as it always did."""
    cfg = NetConfig(head="linear")
    assert "pull.b" not in init_meta(cfg) and "pull.b" in init_meta(NetConfig(head="linear", imp_pull=True))
    with pytest.raises(MetaclError, match="imp_pull"):
        NetConfig.from_dict({"head": "mlp", "imp_pull": True})
    with pytest.raises(MetaclError, match="no batches"):
        LearnedOptimizer(_model().parameters(), config=cfg).prime([])


def test_ratio_is_bounded_and_scale_free():
    imp = torch.tensor([0.0, 1.0, 3.0, 100.0])
    r = fe.pull_ratio(imp)
    assert float(r.min()) == 0.0 and float(r.max()) < 1.0
    torch.testing.assert_close(fe.pull_ratio(7.0 * imp), r)


def test_ckl_primes_on_the_old_corpus_without_touching_the_run_generator():
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from test_strategies_common import make_ctx

    from metacl.ckl.stream import prime_on_old_corpus

    ctx = make_ctx()
    before = ctx.generator.get_state().clone()
    opt = LearnedOptimizer(ctx.model.parameters(), config=NetConfig(head="linear", anchor_start=True, imp_pull=True))
    assert prime_on_old_corpus(opt, ctx, 4) == 2          # 4 documents in batches of ctx.batch_size = 2
    assert torch.equal(ctx.generator.get_state(), before)
    w = ctx.model.model.layers[0].mlp.down_proj.weight
    assert float(opt.state[w]["imp_prev"].max()) == pytest.approx(1.0)
    torch.testing.assert_close(opt.state[w]["anchor"], w.detach())
    ctx.old_corpus = []
    with pytest.raises(MetaclError, match="--old-corpus"):
        prime_on_old_corpus(opt, ctx, 4)


def test_ckl_config_refuses_priming_without_the_learned_optimizer():
    from metacl.ckl.config import CklConfig

    with pytest.raises(MetaclError, match="--learned-prime-docs applies"):
        CklConfig(model="m", data="x", out="y", learned_prime_docs=8).validate()
    with pytest.raises(MetaclError, match=">= 0"):
        CklConfig(model="m", data="x", out="y", optimizer="learned", learned_prime_docs=-1).validate()


def test_pull_scale_scales_the_pull_alone_and_is_refused_where_it_has_no_meaning():
    meta, cfg = _meta(pull_logit=2.0)
    meta["coef.w"].zero_()
    meta["coef.b"].zero_()
    meta["pull.w"].zero_()
    moved = {}
    for scale in (1.0, 0.5, 0.0):
        model = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[1.0, 2.0, -1.0, 0.5]]))
        opt = LearnedOptimizer(model.parameters(), meta=meta, config=cfg, pull_scale=scale)
        opt.prime([lambda: model(torch.tensor([[1.0, 0.1, 0.0, 0.0]])).sum()])
        with torch.no_grad():
            model.weight.add_(1.0)
        start = model.weight.detach().clone()
        model.weight.grad = torch.zeros_like(model.weight)
        opt.step()
        moved[scale] = start - model.weight.detach()
    torch.testing.assert_close(moved[0.5], 0.5 * moved[1.0], rtol=1e-5, atol=1e-6)
    assert float(moved[0.0].abs().max()) == 0.0 and float(moved[1.0].abs().max()) > 0
    with pytest.raises(MetaclError, match="imp_pull"):
        LearnedOptimizer(_model().parameters(), config=NetConfig(head="linear"), pull_scale=0.5)
    with pytest.raises(MetaclError, match="negative"):
        LearnedOptimizer(_model().parameters(), meta=meta, config=cfg, pull_scale=-1.0)
    from metacl.ckl.config import CklConfig

    with pytest.raises(MetaclError, match="--learned-pull-scale applies"):
        CklConfig(model="m", data="x", out="y", learned_pull_scale=0.5).validate()
