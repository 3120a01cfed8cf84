"""The engine's speed changes (issue 18) give the same numbers as the straightforward code.

Each speed-up is checked against an independent, plainly written reference kept here:
- the fused AdamW update (`_AdamWStep`, hand-written backward) against AdamW written in
  ordinary autograd ops (the engine's formula before issue 18), for second-order, first-order
  and truncated unrolls, meta-gradients w.r.t. initial params and token weights, one level
  higher (an outer `create_graph=True`), rows with zero second moment, and torch's AdamW values;
- `func.grad` for frozen params against the fresh-leaf path;
- `per_example="loop"` against `per_example="vmap"` and against separate unrolls;
- `checkpoint=n` (replay from kept inputs) against no checkpointing, with the replay count.
Float64 throughout, so the tolerances (1e-12) mean "same computation up to rounding".
"""

from __future__ import annotations

import pytest
import torch

from engine_fixtures import MLP, TinyTransformer, lm_batch, mlp_batches, mse_loss_with_weights, rel_err
from metacl.engine import adamw, lm_loss, sgd, unroll

DT = torch.float64


class ReferenceAdamW:
    """AdamW in plain differentiable ops (the engine's code before the fused update)."""

    def __init__(self, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay

    def init(self, params):
        return {"exp_avg": {k: torch.zeros_like(v) for k, v in params.items()},
                "exp_avg_sq": {k: torch.zeros_like(v) for k, v in params.items()}}

    def update(self, params, grads, state, step):
        b1, b2 = self.betas
        bc1, bc2 = 1.0 - b1 ** (step + 1), 1.0 - b2 ** (step + 1)
        new_p, new_m, new_v = {}, {}, {}
        for k, p in params.items():
            g = grads[k]
            if self.weight_decay:
                p = p * (1.0 - self.lr * self.weight_decay)
            m = b1 * state["exp_avg"][k] + (1.0 - b1) * g
            v = b2 * state["exp_avg_sq"][k] + (1.0 - b2) * g * g
            denom = v.clamp_min(torch.finfo(v.dtype).tiny).sqrt() / (bc2**0.5) + self.eps
            new_p[k] = p - (self.lr / bc1) * m / denom
            new_m[k], new_v[k] = m, v
        return new_p, {"exp_avg": new_m, "exp_avg_sq": new_v}



def lm_setup(K: int, seed: int = 0, lead=(), vocab_used: int = 16):
    torch.manual_seed(seed)
    model = TinyTransformer(vocab=24).to(DT)  # tokens < 16 only: 8 embedding rows never get a gradient (v' = 0)
    gen = torch.Generator().manual_seed(seed)
    batches = [lm_batch(vocab_used, 2, 8, gen, lead) for _ in range(K)]
    query = lm_batch(vocab_used, 2, 8, gen, lead)
    w = (torch.rand(*lead, K, 2, 8, generator=gen, dtype=DT) + 0.5).requires_grad_(True)
    for i, b in enumerate(batches):
        b["token_weights"] = w[..., i, :, :]
    return model, batches, query, w


def meta_grads(model, batches, query, w, opt, params=None, **kw):
    params = dict(model.named_parameters()) if params is None else params
    pK, _ = unroll(model, params, lm_loss, batches, optimizer=opt, **kw)
    targets = [w] + [p for p in params.values() if p.requires_grad]
    return torch.autograd.grad(lm_loss(model, pK, query), targets, allow_unused=True)


@pytest.mark.parametrize("mode", [{}, {"first_order": True}, {"truncate": 2}])
def test_fused_adamw_meta_gradients_equal_plain_ops(mode):
    model, batches, query, w = lm_setup(3)
    kw = dict(lr=0.01, eps=1e-3, weight_decay=0.1)  # large eps: the update's derivative w.r.t. g is far from 0
    ours = meta_grads(model, batches, query, w, adamw(**kw), **mode)
    ref = meta_grads(model, batches, query, w, ReferenceAdamW(**kw), **mode)
    if mode.get("first_order"):
        assert ours[0] is None and ref[0] is None  # weights act only through the (detached) inner gradients
        ours, ref = ours[1:], ref[1:]
    assert rel_err(ours, ref) < 1e-12
    assert float(sum(g.abs().sum() for g in ref)) > 0
    # the check can fail: a wrong beta in the reference is detected
    wrong = meta_grads(model, batches, query, w, ReferenceAdamW(lr=0.01, eps=1e-3, weight_decay=0.1, betas=(0.8, 0.999)), **mode)
    wrong = wrong[1:] if mode.get("first_order") else wrong
    assert rel_err(ours, wrong) > 1e-6


def test_fused_adamw_rows_with_zero_second_moment_are_finite_and_equal():
    """Embedding rows no token uses have v' = 0: the derivative there must be 0 (not inf/NaN)."""
    model, batches, query, w = lm_setup(2, vocab_used=16)
    ours = meta_grads(model, batches, query, w, adamw(lr=0.01, eps=1e-10))
    ref = meta_grads(model, batches, query, w, ReferenceAdamW(lr=0.01, eps=1e-10))
    assert all(torch.isfinite(g).all() for g in ours)
    assert rel_err(ours, ref) < 1e-12


def test_fused_adamw_differentiable_twice_more():
    """An outer create_graph=True (a hyper-gradient of the meta-gradient) matches plain ops."""
    torch.manual_seed(0)
    model = MLP().to(DT)
    gen = torch.Generator().manual_seed(0)
    batches, query = mlp_batches(2, 6, gen), mlp_batches(1, 6, gen)[0]
    weights = (torch.rand(6, generator=gen, dtype=DT) + 0.5).requires_grad_(True)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}

    def hyper(opt):
        pK, _ = unroll(model, params, mse_loss_with_weights(weights), batches, optimizer=opt)
        out = torch.func.functional_call(model, pK, (query["x"],))
        g = torch.autograd.grad(((out - query["y"]) ** 2).mean(), list(params.values()), create_graph=True)
        return torch.autograd.grad(sum((x**2).sum() for x in g), [weights, *params.values()])

    kw = dict(lr=0.05, eps=1e-2, weight_decay=0.1)
    assert rel_err(hyper(adamw(**kw)), hyper(ReferenceAdamW(**kw))) < 1e-11


def test_fused_adamw_values_match_torch_adamw():
    torch.manual_seed(0)
    p0 = torch.randn(5, 4, dtype=DT)
    grads = [torch.randn(5, 4, dtype=DT) for _ in range(4)]
    ref = p0.clone().requires_grad_(True)
    topt = torch.optim.AdamW([ref], lr=0.01, weight_decay=0.1)
    opt, p, s = adamw(lr=0.01, weight_decay=0.1), {"w": p0.clone()}, None
    s = opt.init(p)
    for t, g in enumerate(grads):
        ref.grad = g.clone()
        topt.step()
        p, s = opt.update(p, {"w": g}, s, t)
    assert torch.allclose(p["w"], ref.detach(), rtol=1e-13, atol=1e-15)


def test_frozen_params_use_func_grad_with_the_same_token_weight_gradient():
    """Params that need no gradient (a frozen theta_0) give the same d meta / d weights."""
    model, batches, query, w = lm_setup(2)
    frozen = {k: v.detach() for k, v in model.named_parameters()}
    g_frozen = meta_grads(model, batches, query, w, adamw(lr=0.01, eps=1e-3), params=frozen)
    g_leaf = meta_grads(model, batches, query, w, adamw(lr=0.01, eps=1e-3))  # params require grad: fresh-leaf path
    assert len(g_frozen) == 1
    assert rel_err(g_frozen[:1], g_leaf[:1]) < 1e-12
    assert float(g_frozen[0].abs().sum()) > 0


@pytest.mark.parametrize("opt", [lambda: adamw(lr=0.01, eps=1e-3), lambda: sgd(lr=0.1, momentum=0.5)])
def test_per_example_loop_equals_vmap(opt):
    M, K = 3, 2
    model, batches, query, w = lm_setup(K, lead=(M,))
    params = {k: v.detach() for k, v in model.named_parameters()}  # frozen, as in token weighting
    res = {}
    for impl in ("loop", "vmap"):
        pK, sK = unroll(model, params, lm_loss, batches, optimizer=opt(), per_example=impl)
        assert all(v.shape == (M, *params[k].shape) for k, v in pK.items())
        losses = torch.stack([lm_loss(model, {k: v[m] for k, v in pK.items()}, {k: v[m] for k, v in query.items()})
                              for m in range(M)])
        res[impl] = (losses.detach(), torch.autograd.grad(losses.sum(), w)[0], sK)
    assert torch.allclose(res["loop"][0], res["vmap"][0], rtol=1e-12)
    assert rel_err([res["loop"][1]], [res["vmap"][1]]) < 1e-10
    flat = lambda s: [t for t in torch.utils._pytree.tree_flatten(s)[0] if isinstance(t, torch.Tensor)]  # noqa: E731
    assert rel_err(flat(res["loop"][2]), flat(res["vmap"][2])) < 1e-12 if flat(res["vmap"][2]) else True
    pK, sK = unroll(model, params, lm_loss, batches, optimizer=opt(), per_example="loop", return_state=False)
    assert sK is None


@pytest.mark.parametrize("every", [2, 4])
def test_checkpoint_replay_gives_identical_gradients(every):
    K = 4
    model, batches, query, w = lm_setup(K)
    calls = {"n": 0}

    def loss_fn(m, p, b):
        calls["n"] += 1
        return lm_loss(m, p, b)

    params = dict(model.named_parameters())
    res = {}
    for ck in (False, True, every):
        calls["n"] = 0
        pK, _ = unroll(model, params, loss_fn, batches, optimizer=adamw(lr=0.01, eps=1e-3), checkpoint=ck)
        res[ck] = torch.autograd.grad(lm_loss(model, pK, query), [w, *params.values()])
        res[(ck, "calls")] = calls["n"]
    assert rel_err(res[every], res[False]) < 1e-12
    assert rel_err(res[True], res[False]) < 1e-12
    # forward K + recompute K + replays: step k replays k mod every steps from the last kept inputs
    assert res[(every, "calls")] == 2 * K + sum(k % every for k in range(K))
    assert res[(True, "calls")] == 2 * K
