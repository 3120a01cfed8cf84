"""The linear head (`NetConfig(head="linear")`): its fast in-place step computes the plain formula.

`_reference_step` is the straightforward version built from the pure, differentiable functions
(`features.param_features(clamp=False)`, `network.linear_update`), as `LearnedFunctional` uses them
in meta-training. The folded, chunked step must match it to float32 rounding over steps, across
task boundaries, with chunking, param groups (one frozen) and a non-contiguous parameter.
"""

import pytest
import torch
from torch import nn

from metacl.engine import unroll
from metacl.errors import MetaclError
from metacl.optim import LearnedFunctional, LearnedOptimizer, NetConfig, init_meta
from metacl.optim import features as fe
from metacl.optim import network as nw


def _random_linear_meta(seed=1):
    """Every coefficient and the step scale depend non-trivially on the tensor context."""
    cfg = NetConfig(init_lr=1e-2, head="linear")
    meta = init_meta(cfg, seed)
    g = torch.Generator().manual_seed(seed)
    # divided by the per-feature scale, so the coefficients in effect are O(0.1-1) for every feature
    scale = torch.tensor(nw.COEF_FEATURE_SCALE)
    meta["coef.w"] = torch.randn(meta["coef.w"].shape, generator=g) * 0.3 / scale
    meta["coef.b"] = torch.randn(meta["coef.b"].shape, generator=g) * 0.5 / scale
    meta["ctx_s.w"] = torch.randn(meta["ctx_s.w"].shape, generator=g) * 0.2
    return meta, cfg


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 16)
        self.l2 = nn.Linear(16, 1)
        self.wt = nn.Parameter(torch.randn(16, 6).t())  # non-contiguous
        self.scale = nn.Parameter(torch.ones(16))

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x) + x @ self.wt) * self.scale)


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 6, generator=g)
    return x, torch.sin(x[:, :1]) + x[:, 1:2]


def _grads(model, x, y):
    model.zero_grad()
    (model(x) - y).pow(2).mean().backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _reference_step(meta, cfg, params, grads, lrs, state, total_steps):
    state["t"] += 1
    state["t_task"] += 1
    t, frac = state["t"], min(1.0, (state["t_task"] - 1) / total_steps)
    entries = []
    for i, (p, g) in enumerate(zip(params, grads)):
        state[i] = fe.advance_state(p, g, state.get(i) or fe.init_tensor_state(p))
        entries.append((p, g, state[i], fe.tensor_scalars(p, g, state[i], t)))
    tokens = torch.stack([fe.tensor_token(p, g, st, sc, frac) for p, g, st, sc in entries])
    coefs, log_s = nw.tensor_conditioning(meta, nw.tensor_context(meta, cfg, tokens))
    out = []
    for i, ((p, g, st, sc), lr) in enumerate(zip(entries, lrs)):
        feats = fe.param_features(p, g, st, sc, clamp=False)
        out.append(p - lr * nw.linear_update(meta, feats, coefs[i], log_s[i]).view_as(p))
    return out


@pytest.mark.parametrize("chunk_size", [5, 64, 1 << 16])
def test_linear_head_fast_step_matches_reference_across_consolidate(chunk_size):
    meta, cfg = _random_linear_meta()
    torch.manual_seed(0)
    model = _Model()
    params = [p.detach().clone() for p in model.parameters()]
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = [
        {"params": [model.l1.weight, model.l1.bias, model.wt], "lr": 0.7},
        {"params": [model.l2.weight, model.l2.bias], "lr": 0.0},
        {"params": [model.scale]},
    ]
    lr_of = {id(p): g.get("lr", 1.0) for g in groups for p in g["params"]}
    lrs = [lr_of[id(p)] for p in model.parameters()]
    opt = LearnedOptimizer(groups, meta=meta, config=cfg, total_steps=6, chunk_size=chunk_size)
    state = {"t": 0, "t_task": 0}
    worst = 0.0
    for step in range(8):
        x, y = _data(step)
        _grads(model, x, y)
        ref_model = _Model()
        ref_model.load_state_dict(dict(zip(dict(model.named_parameters()), params)))
        ref_grads = _grads(ref_model, x, y)
        opt.step()
        params = _reference_step(meta, cfg, params, ref_grads, lrs, state, total_steps=6)
        if step in (2, 5):
            opt.consolidate()
            for i, p in enumerate(params):
                state[i] = fe.consolidate_tensor(p, state[i])
            state["t_task"] = 0
        worst = max(worst, max((p.detach() - q).abs().max().item() for p, q in zip(model.parameters(), params)))
    assert worst <= 1e-6, f"linear-head fast step drifted from the reference by {worst}"
    assert torch.equal(model.l2.weight, init["l2.weight"]), "the lr=0 group must not move"
    for name in ("l1.weight", "wt", "scale"):
        moved = (dict(model.named_parameters())[name] - init[name]).abs().max().item()
        assert moved > 1e-3, f"{name} barely moved: the comparison would be vacuous"


@pytest.mark.parametrize("anchor_start", [False, True])
def test_linear_head_functional_matches_the_torch_optimizer(anchor_start):
    """`LearnedFunctional` (meta-training) and `LearnedOptimizer` (deployment) take the same steps."""
    meta, cfg = _random_linear_meta(3)
    cfg.anchor_start = anchor_start
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    f = LearnedFunctional(meta, cfg, total_steps=5)
    state = f.init(params)
    opt = LearnedOptimizer(model.parameters(), meta=meta, config=cfg, total_steps=5, chunk_size=7)
    for step in range(5):
        x, y = _data(10 + step)
        model.zero_grad()
        (model(x) - y).pow(2).mean().backward()
        grads = {k: v.grad.clone() for k, v in model.named_parameters()}
        opt.step()
        params, state = f.update(params, grads, state, step)
        if step == 2:
            opt.consolidate()
            state = f.consolidate(params, state)
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), params[k], rtol=0, atol=1e-6)


def test_untrained_linear_head_is_close_to_adam_and_meta_gradients_reach_it():
    """At init the linear head is ~Adam(0.9, 0.999) at init_lr; every meta-parameter gets a meta-gradient."""
    cfg = NetConfig(init_lr=1e-2, head="linear")
    torch.manual_seed(0)
    model = nn.Linear(6, 1)
    ref = nn.Linear(6, 1)
    ref.load_state_dict(model.state_dict())
    opt = LearnedOptimizer(model.parameters(), config=cfg)
    adam = torch.optim.Adam(ref.parameters(), lr=1e-2, eps=1e-8)
    for step in range(5):
        x, y = _data(step)
        for m, o in ((model, opt), (ref, adam)):
            m.zero_grad()
            (m(x) - y[:, :1]).pow(2).mean().backward()
            o.step()
    torch.manual_seed(0)
    start = nn.Linear(6, 1)  # the same initial weights as `model`
    for p, q, s in zip(model.parameters(), ref.parameters(), start.parameters()):
        adam_moved = (q - s).abs().max().item()
        assert adam_moved > 0.02, "Adam must move the weights for the comparison to mean anything"
        assert (p - q).abs().max().item() < 0.1 * adam_moved, "untrained linear head should track Adam closely"

    meta = {k: v.clone().requires_grad_(True) for k, v in init_meta(cfg, 0).items()}
    net = nn.Linear(6, 1)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    loss_fn = lambda m, p, b: (torch.func.functional_call(m, p, (b[0],)) - b[1][:, :1]).pow(2).mean()
    f = LearnedFunctional(meta, cfg, total_steps=4)
    batches = [_data(s) for s in range(4)]
    pK, st = unroll(net, params, loss_fn, batches[:2], optimizer=f, first_order=True)
    st = f.consolidate(pK, st)
    pK, _ = unroll(net, pK, loss_fn, batches[2:], optimizer=f, first_order=True, state=st, start_step=2)
    loss_fn(net, pK, _data(9)).backward()
    no_grad = [k for k, v in meta.items() if v.grad is None or v.grad.abs().sum() == 0]
    assert no_grad == [], f"meta-parameters without meta-gradient: {no_grad}"


def test_unknown_head_is_one_clear_error():
    with pytest.raises(MetaclError, match="head"):
        NetConfig.from_dict({"head": "deep"})


def test_linear_head_degenerate_tensors_match_reference():
    """A 1-element tensor (importance range 0: the min-max feature is 0/1e-12) and an all-zero bias
    (importance 0): the folded step must not cancel catastrophically there."""
    meta, cfg = _random_linear_meta(5)
    one = nn.Parameter(torch.tensor([0.5]))
    zero_bias = nn.Parameter(torch.zeros(7))
    w = nn.Parameter(torch.randn(7, 3) * 0.3)
    params = [one.detach().clone(), zero_bias.detach().clone(), w.detach().clone()]
    opt = LearnedOptimizer([one, zero_bias, w], meta=meta, config=cfg, total_steps=4, chunk_size=4)
    state = {"t": 0, "t_task": 0}
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        grads = [torch.randn(q.shape, generator=g) * 0.1 for q in params]
        for p, gr in zip((one, zero_bias, w), grads):
            p.grad = gr.clone()
        opt.step()
        params = _reference_step(meta, cfg, params, grads, [1.0] * 3, state, total_steps=4)
        for p, q in zip((one, zero_bias, w), params):
            assert torch.isfinite(p).all()
            assert (p.detach() - q).abs().max().item() <= 1e-6, step


def test_linear_head_weights_and_optimizer_state_round_trip(tmp_path):
    """save_pretrained/from_pretrained keep the head; a reloaded optimizer state takes the same next step."""
    import copy

    meta, cfg = _random_linear_meta(6)
    torch.manual_seed(1)
    model = _Model()
    opt = LearnedOptimizer(model.parameters(), meta=meta, config=cfg, total_steps=5, chunk_size=8)
    for step in range(3):
        _grads(model, *_data(step))
        opt.step()
    opt.save_pretrained(tmp_path / "w")
    twin = copy.deepcopy(model)
    opt2 = LearnedOptimizer.from_pretrained(tmp_path / "w", twin.parameters(), total_steps=5, chunk_size=8)
    assert opt2.cfg.head == "linear" and set(opt2.meta) == set(meta)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # a copy: in memory, torch's state_dict aliases the state
    x, y = _data(9)
    _grads(model, x, y)
    _grads(twin, x, y)
    opt.step()
    opt2.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_linear_head_bf16_params_follow_the_float32_step():
    meta, cfg = _random_linear_meta(7)
    torch.manual_seed(2)
    m16 = nn.Linear(6, 16).to(torch.bfloat16)
    m32 = nn.Linear(6, 16)
    m32.load_state_dict({k: v.float() for k, v in m16.state_dict().items()})
    start = {k: v.clone() for k, v in m16.state_dict().items()}
    o32 = LearnedOptimizer(m32.parameters(), meta=meta, config=cfg, chunk_size=9, lr=10.0)
    o16 = LearnedOptimizer(m16.parameters(), meta=meta, config=cfg, chunk_size=9, lr=10.0)
    for p32, p16 in zip(m32.parameters(), m16.parameters()):
        p16.grad = (torch.randn(p16.shape) * 0.1).to(torch.bfloat16)
        p32.grad = p16.grad.float()
    o32.step()
    o16.step()
    for (name, p32), p16 in zip(m32.named_parameters(), m16.parameters()):
        assert p16.dtype == torch.bfloat16 and all(v.dtype == torch.float32 for v in o16.state[p16].values())
        s0 = start[name].float()
        d16, d32 = p16.float() - s0, p32.detach() - s0
        tol = (s0.abs() + d32.abs()) * 2**-8 + 1e-6   # one bf16 rounding of the fp32 result
        assert ((d16 - d32).abs() <= tol).all(), name
        assert d32.abs().mean() > 2 * tol.mean(), "steps too small for this comparison to mean anything"


def _toy_run(meta, cfg, steps, after_step=None):
    """A fixed tanh MLP (seed 5) trained `steps` steps on `_data` by the linear head; returns (model, start, opt)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    start = [p.detach().clone() for p in model.parameters()]
    opt = LearnedOptimizer(model.parameters(), meta=meta, config=cfg, total_steps=steps)
    for step in range(steps):
        x, y = _data(step)
        model.zero_grad()
        (model(x) - y).pow(2).mean().backward()
        opt.step()
        if after_step is not None:
            after_step(step, model, start, opt)
    return model, start, opt


def test_anchor_start_anchors_the_starting_weights_and_its_drift_feature_pulls_back():
    """`anchor_start`: the weights a run starts from are the anchor from step 1, so a positive drift
    coefficient pulls towards them (an L2-SP-like term a CKL run can use; without it the drift feature is 0
    until a `consolidate()` that a single-task run never calls)."""
    def run(anchor_start, drift_coef):
        cfg = NetConfig(init_lr=1e-2, head="linear", anchor_start=anchor_start)
        meta = init_meta(cfg, 0)
        meta["coef.b"][7] = drift_coef / nw.COEF_FEATURE_SCALE[7]  # coefficient in effect on (p - anchor) / rms(p)

        def first_step(step, model, start, opt):
            if step == 0:
                for p, p0 in zip(model.parameters(), start):
                    assert ("anchor" in opt.state[p]) == anchor_start
                    assert not anchor_start or torch.equal(opt.state[p]["anchor"], p0)

        model, start, _ = _toy_run(meta, cfg, 20, first_step)
        return sum((p.detach() - p0).pow(2).sum().item() for p, p0 in zip(model.parameters(), start)) ** 0.5

    free, pulled = run(True, 0.0), run(True, 5.0)
    assert pulled < 0.8 * free, (pulled, free)
    assert run(False, 5.0) == pytest.approx(run(False, 0.0), rel=1e-6)  # no anchor: drift is 0, the coefficient inert


def test_coef_scale_is_part_of_the_config_and_only_rescales_coefficients(tmp_path):
    """Weights saved with their own `coef_scale` load with it; the same coefficients in effect give the same steps."""
    from metacl.optim.learned import load_meta, save_meta

    base = NetConfig(init_lr=1e-2, head="linear", anchor_start=True)
    wide = NetConfig(init_lr=1e-2, head="linear", anchor_start=True, coef_scale=(1, 1, 1, 1, 0.01, 0.01, 0.01, 1.0))
    m_base, m_wide = init_meta(base, 0), init_meta(wide, 0)
    m_base["coef.b"][7] = 2.0 / nw.COEF_FEATURE_SCALE[7]   # both: drift coefficient 2 in effect
    m_wide["coef.b"][7] = 2.0
    m_base["coef.w"][:, 7] = m_wide["coef.w"][:, 7] = 0.0
    save_meta(tmp_path / "wide", m_wide, wide)
    m_wide, wide, _ = load_meta(tmp_path / "wide")
    assert tuple(wide.coef_scale) == (1, 1, 1, 1, 0.01, 0.01, 0.01, 1.0)
    out = []
    for meta, cfg in ((m_base, base), (m_wide, wide)):
        model, _, _ = _toy_run(meta, cfg, 10)
        out.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(MetaclError, match="coef_scale has 3 entries"):
        nw.coef_scale(NetConfig(head="linear", coef_scale=(1, 1, 1)))
