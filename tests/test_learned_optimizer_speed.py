"""The fast eager `LearnedOptimizer.step` must compute what the plain formulas compute.

`_reference_step` below is the straightforward version (whole tensors, out-of-place, built only
from the pure functions in `metacl.optim.features` / `network`, as the step was before it was
optimised). The optimised step (in-place state, fused reductions, transposed feature buffers,
fused addmm) is compared with it over several steps, across a task boundary (`consolidate()`),
with several chunk sizes, param groups with different lr (one of them 0) and a non-contiguous
parameter. Tolerance: max abs diff <= 1e-6 on the parameters.
"""

import pytest
import torch
from torch import nn

from metacl.optim import LearnedOptimizer, NetConfig, init_meta
from metacl.optim import features as fe
from metacl.optim import network as nw


def _random_meta(seed=1):
    """Every part of the network non-trivial (incl. a dense skip), so a wrong fused layout shows."""
    cfg = NetConfig(init_lr=1e-2)
    meta = init_meta(cfg, seed)
    g = torch.Generator().manual_seed(seed)
    for k in ("mlp2.w", "ctx_s.w", "skip.w", "mlp1.b", "mlp2.b"):
        meta[k] = torch.randn(meta[k].shape, generator=g) * 0.2
    return meta, cfg


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 16)
        self.l2 = nn.Linear(16, 1)
        self.wt = nn.Parameter(torch.randn(16, 6).t())  # non-contiguous (a transposed view)
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
    """Straightforward step: advance_state, tensor_scalars/token, transformer, param_features, param_update."""
    state["t"] += 1
    state["t_task"] += 1
    t, frac = state["t"], min(1.0, (state["t_task"] - 1) / total_steps)
    entries = []
    for i, (p, g) in enumerate(zip(params, grads)):
        state[i] = fe.advance_state(p, g, state.get(i) or fe.init_tensor_state(p))
        entries.append((p, g, state[i], fe.tensor_scalars(p, g, state[i], t)))
    tokens = torch.stack([fe.tensor_token(p, g, st, sc, frac) for p, g, st, sc in entries])
    h_bias, log_s = nw.tensor_conditioning(meta, nw.tensor_context(meta, cfg, tokens))
    out = []
    for i, ((p, g, st, sc), lr) in enumerate(zip(entries, lrs)):
        u = nw.param_update(meta, cfg, fe.param_features(p, g, st, sc), h_bias[i], log_s[i]).view_as(p)
        out.append(p - lr * u)
    return out


def _reference_consolidate(params, state):
    for i, p in enumerate(params):
        state[i] = fe.consolidate_tensor(p, state[i])
    state["t_task"] = 0


@pytest.mark.parametrize("chunk_size", [5, 64, 1 << 16])
def test_optimised_step_matches_reference_across_consolidate(chunk_size):
    meta, cfg = _random_meta()
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
        if step in (2, 5):  # two task boundaries: imp_prev/anchor features and their max-accumulation
            opt.consolidate()
            _reference_consolidate(params, state)
        worst = max(worst, max((p.detach() - q).abs().max().item() for p, q in zip(model.parameters(), params)))
    assert worst <= 1e-6, f"optimised step drifted from the reference by {worst}"
    assert torch.equal(model.l2.weight, init["l2.weight"]), "the lr=0 group must not move"
    for name in ("l1.weight", "wt", "scale"):
        moved = (dict(model.named_parameters())[name] - init[name]).abs().max().item()
        assert moved > 1e-3, f"{name} barely moved: the comparison would be vacuous"


def test_fast_scalars_token_and_features_match_the_pure_functions():
    g = torch.Generator().manual_seed(3)
    p, grad = torch.randn(40, 30, generator=g), torch.randn(40, 30, generator=g) * 1e-2
    st = fe.init_tensor_state(p)
    for _ in range(3):
        st = fe.advance_state(p, grad + 1e-3 * torch.randn(40, 30, generator=g), st)
    for consolidated in (False, True):
        if consolidated:
            st = fe.consolidate_tensor(p, st)
            st = fe.advance_state(p + 0.01, grad, st)
        sc_ref = fe.tensor_scalars(p, grad, st, 4.0)
        tok_ref = fe.tensor_token(p, grad, st, sc_ref, 0.3)
        sc, tok = fe.scalars_and_token(p, grad, st, 4.0, 0.3)
        torch.testing.assert_close(tok, tok_ref, rtol=1e-5, atol=1e-6)
        for k, v in sc_ref.items():
            torch.testing.assert_close(torch.as_tensor(sc[k]), torch.as_tensor(v), rtol=1e-6, atol=1e-7)
        ref = fe.param_features(p, grad, st, sc_ref)
        buf = torch.full((fe.N_PARAM_FEATURES, p.numel()), float("nan"))
        fe.param_features_into(buf, torch.empty(p.numel()), p.reshape(-1), grad.reshape(-1),
                               {k: v.reshape(-1) for k, v in st.items()}, sc_ref)
        assert torch.equal(buf.t(), ref)  # same arithmetic, so bit-identical


def test_fused_network_matches_param_update():
    meta, cfg = _random_meta(5)
    feats = torch.randn(50, cfg.n_param_features)
    h_bias, log_s = torch.randn(cfg.hidden) * 0.1, torch.tensor(0.3)
    ref = nw.param_update(meta, cfg, feats, h_bias, log_s)
    buf = torch.empty(cfg.n_param_features + cfg.hidden, 50)
    buf[: cfg.n_param_features] = feats.t()
    u = nw.param_update_into(nw.fast_weights(meta), cfg, buf, torch.empty(2, 50),
                             (meta["mlp1.b"] + h_bias).unsqueeze(-1), torch.exp(meta["log_scale"] + log_s))
    torch.testing.assert_close(u, ref, rtol=1e-5, atol=1e-7)


def test_pretrained_weights_still_load_and_match_reference():
    """The shipped MLP-head (digits) weights go through the optimised path and give the reference numbers
    (the linear-head default has its own reference test in tests/test_lo_linear_head.py)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = LearnedOptimizer.pretrained(model.parameters(), name="digits", total_steps=4, chunk_size=33)
    meta, cfg = opt.meta, opt.cfg
    params = [p.detach().clone() for p in model.parameters()]
    state = {"t": 0, "t_task": 0}
    for step in range(3):
        x, y = _data(step)
        _grads(model, x, y)
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        params = _reference_step(meta, cfg, params, grads, [1.0] * len(params), state, total_steps=4)
    diff = max((p.detach() - q).abs().max().item() for p, q in zip(model.parameters(), params))
    assert diff <= 1e-6


def test_bf16_params_keep_float32_state_and_follow_the_float32_step():
    """Low-precision params: statistics stay float32 and the step equals the fp32 one up to bf16 rounding."""
    meta, cfg = _random_meta(7)
    torch.manual_seed(2)
    m16 = nn.Linear(6, 16).to(torch.bfloat16)
    m32 = nn.Linear(6, 16)
    m32.load_state_dict({k: v.float() for k, v in m16.state_dict().items()})  # same starting point
    start = {k: v.clone() for k, v in m16.state_dict().items()}
    o32 = LearnedOptimizer(m32.parameters(), meta=meta, config=cfg, chunk_size=9)
    o16 = LearnedOptimizer(m16.parameters(), meta=meta, config=cfg, chunk_size=9)
    for p32, p16 in zip(m32.parameters(), m16.parameters()):
        p16.grad = (torch.randn(p16.shape) * 0.1).to(torch.bfloat16)
        p32.grad = p16.grad.float()
    o32.step()
    o16.step()
    for (name, p32), p16 in zip(m32.named_parameters(), m16.parameters()):
        assert p16.dtype == torch.bfloat16
        assert all(v.dtype == torch.float32 for v in o16.state[p16].values())
        assert not torch.equal(p16, start[name]), f"{name} did not move"
        s0 = start[name].float()
        d16, d32 = p16.float() - s0, p32.detach() - s0
        tol = (s0.abs() + d32.abs()) * 2**-7 + 1e-6   # bf16 rounding of the update and of the result
        assert ((d16 - d32).abs() <= tol).all(), f"{name}: bf16 step differs from the fp32 step beyond rounding"
        assert d32.abs().mean() > 2 * tol.mean(), "steps too small for this comparison to mean anything"


def _previous_scalars_and_token(p, g, st, t, frac):
    """`features.scalars_and_token` as it was before the reductions moved into `tensor_sums` (issue 15)."""
    import math

    pf, gf, m1 = p.reshape(-1), g.reshape(-1), st["m1"].reshape(-1)
    n = pf.numel()
    imp = st["imp"].reshape(-1)
    rms = lambda ss: (ss / n + 1e-16).sqrt()
    sc = {"rms_p": rms(torch.dot(pf, pf)) + 1e-6, "bc2": 1 - fe.BETA2**t}
    sc["imp_min"], sc["imp_max"] = torch.aminmax(imp)
    for k, d in zip(fe.MOMENTS, fe.DECAYS):
        sc["bc_" + k] = 1 - d**t
    bc = sc["bc_m1"]
    rms_m = (torch.dot(m1, m1) / (bc * bc) / n + 1e-16).sqrt()
    rms_g = rms(torch.dot(gf, gf))
    align = (torch.dot(m1, gf) / bc / n) / (rms_m * rms_g + 1e-12)
    prev = drift = torch.zeros((), dtype=pf.dtype)
    if "imp_prev" in st:
        ip = st["imp_prev"].reshape(-1)
        sc["prev_min"], sc["prev_max"] = torch.aminmax(ip)
        prev = (ip.mean() - sc["prev_min"]) / (sc["prev_max"] - sc["prev_min"] + 1e-12)
        dlt = pf - st["anchor"].reshape(-1)
        drift = (rms(torch.dot(dlt, dlt)) / sc["rms_p"]).clamp(max=10.0)
    sc["imp_rng"] = sc["imp_max"] - sc["imp_min"] + 1e-12
    if "imp_prev" in st:
        sc["prev_rng"] = sc["prev_max"] - sc["prev_min"] + 1e-12
    imp_mean = (imp.mean() - sc["imp_min"]) / sc["imp_rng"]
    consts = torch.tensor([0.1 * math.log(n), float(frac), 1.0 if p.dim() <= 1 else 0.0], dtype=pf.dtype)
    token = torch.stack([0.1 * torch.log(rms_g + 1e-12), 0.1 * torch.log(sc["rms_p"]), consts[0], consts[1],
                         consts[2], prev, drift, align, imp_mean])
    return sc, token


def test_mlp_head_reductions_are_bit_identical_to_the_previous_implementation():
    """The shipped (MLP-head) step must give exactly the numbers it gave before the issue-15 changes:
    `scalars_and_token` now reads its reductions from `tensor_sums`; same ops, so torch.equal."""
    g = torch.Generator().manual_seed(11)
    p, grad = torch.randn(300, 301, generator=g), torch.randn(300, 301, generator=g) * 1e-2
    st = fe.init_tensor_state(p)
    for step in range(1, 6):
        st = fe.advance_state(p, grad + 1e-3 * torch.randn(300, 301, generator=g), st)
        if step == 3:
            st = fe.consolidate_tensor(p, st)
            p = p + 0.01 * torch.randn(300, 301, generator=g)
        sc, tok = fe.scalars_and_token(p, grad, st, float(step), 0.2)
        sc0, tok0 = _previous_scalars_and_token(p, grad, st, float(step), 0.2)
        assert torch.equal(tok, tok0), step
        assert sc.keys() == sc0.keys()
        assert all(torch.equal(torch.as_tensor(sc[k]), torch.as_tensor(sc0[k])) for k in sc), step


def test_one_pass_advance_and_sum_matches_separate_advance_and_reductions():
    """The linear head's fused `advance_and_sum_`: the same state (bit for bit: elementwise) and the same
    sums up to float32 summation order, across a consolidation, with a ragged last chunk."""
    g = torch.Generator().manual_seed(12)
    p = torch.randn(1000, 37, generator=g)
    st_a = fe.init_tensor_state(p)
    st_b = fe.init_tensor_state(p)
    for step in range(4):
        grad = torch.randn(1000, 37, generator=g) * 1e-2
        if step == 2:
            st_a = fe.consolidate_tensor(p, st_a)
            st_b = {k: v.clone() for k, v in fe.consolidate_tensor(p, st_b).items()}
            p = p + 0.01 * torch.randn(1000, 37, generator=g)
        LearnedOptimizer._advance_inplace(p, grad, st_a, chunk=1000)
        sums = fe.advance_and_sum_(p, grad, st_b, 999, torch.empty(999))
        for k in st_a:
            assert torch.equal(st_a[k], st_b[k]), (step, k)
        ref = fe.tensor_sums(p, grad, st_a)
        assert sums.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(sums[k], ref[k], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("anchor_start", [False, True])
def test_linear_head_numbers_do_not_depend_on_chunk_size(anchor_start):
    """The linear head's default chunk grew from 2^16 to 2^18 for speed (docs/benchmarks.md); its steps are
    bit-identical to 2^16's, because the per-tensor sums are blocked by REDUCE_CHUNK, never by chunk_size.
    Tensors above, between and below both sizes, a task boundary included."""
    from metacl.optim import NetConfig
    from metacl.optim.learned import REDUCE_CHUNK

    torch.manual_seed(0)
    shapes = [(700, 1000), (300, 500), (100, 50), (50,)]   # 700k > 2^18 > 150k > 2^16 > 5k
    assert 700 * 1000 > 1 << 18 > 300 * 500 > REDUCE_CHUNK > 100 * 50
    init = [torch.randn(s) * 0.05 for s in shapes]
    cfg = NetConfig(head="linear", anchor_start=anchor_start)
    runs = []
    for chunk in (1 << 16, None):
        ps = [torch.nn.Parameter(t.clone()) for t in init]
        opt = LearnedOptimizer(ps, config=cfg, total_steps=6, chunk_size=chunk)
        g = torch.Generator().manual_seed(1)
        for step in range(6):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g) * 1e-2
            opt.step()
            if step == 2:
                opt.consolidate()
        runs.append((opt.chunk_size, [p.detach().clone() for p in ps]))
    assert runs[1][0] == 1 << 18
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.equal(a, b)
