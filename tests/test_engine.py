"""Tests of metacl.engine: meta-gradients checked against finite differences and `higher`.

Everything runs in float64 on tiny models so that a relative error of 1e-6 is meaningful.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine_fixtures import (
    MLP,
    TinyTransformer,
    ce_loss,
    lm_batch,
    make_llama_exact_float64,
    mlp_batches,
    mse_loss_with_weights,
    rel_err,
    tiny_llama,
)
from metacl.engine import adamw, functional_loss, lm_loss, sgd, token_nll, unroll
from metacl.errors import MetaclError

DT = torch.float64



def make_opt(kind: str, lr):
    # eps=1e-3: with a tiny eps Adam's first step is ~lr*sign(g), whose derivative w.r.t. the
    # token weights is ~0 and would make the finite-difference check vacuous.
    return sgd(lr=lr, momentum=0.5) if kind == "sgd" else adamw(lr=lr, eps=1e-3, weight_decay=0.1)


def mlp_setup(K: int, seed: int = 0):
    torch.manual_seed(seed)
    model = MLP().to(DT)
    gen = torch.Generator().manual_seed(seed)
    batches = mlp_batches(K, 6, gen)
    query = mlp_batches(1, 6, gen)[0]
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    weights = (torch.rand(6, generator=gen, dtype=DT) + 0.5).requires_grad_(True)
    return model, batches, query, params, weights


def outer_mlp(model, params, query):
    out = torch.func.functional_call(model, params, (query["x"],))
    return ((out - query["y"]) ** 2).mean()


# --------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("K", [1, 3])
def test_meta_gradient_matches_finite_differences(kind, K):
    """d outer(params_K) / d (initial params, token weights, tensor lr) vs central differences."""
    model, batches, query, params, weights = mlp_setup(K)
    lr = torch.tensor(0.05 if kind == "sgd" else 0.01, dtype=DT, requires_grad=True)

    def F_(p0, w, lr_):
        pK, _ = unroll(model, p0, mse_loss_with_weights(w), batches, optimizer=make_opt(kind, lr_))
        return outer_mlp(model, pK, query)

    grads = torch.autograd.grad(F_(params, weights, lr), [*params.values(), weights, lr])
    g_params, g_w, g_lr = grads[:-2], grads[-2], grads[-1]
    gen = torch.Generator().manual_seed(1)
    eps = 1e-6
    with torch.no_grad():
        # one random direction per argument: (F(x + eps v) - F(x - eps v)) / 2 eps == <grad, v>
        vs = {k: torch.randn(v.shape, generator=gen, dtype=DT) for k, v in params.items()}
        plus = {k: params[k] + eps * vs[k] for k in params}
        minus = {k: params[k] - eps * vs[k] for k in params}
        fd = (F_(plus, weights, lr) - F_(minus, weights, lr)) / (2 * eps)
        an = sum((g * vs[k]).sum() for g, k in zip(g_params, params))
        assert abs(fd - an) <= 1e-6 * abs(an) + 1e-10, (fd, an)
        vw = torch.randn(weights.shape, generator=gen, dtype=DT)
        fd = (F_(params, weights + eps * vw, lr) - F_(params, weights - eps * vw, lr)) / (2 * eps)
        an = (g_w * vw).sum()
        assert abs(an) > 1e-8 and abs(fd - an) <= 1e-6 * abs(an), (fd, an)
        fd = (F_(params, weights, lr + eps) - F_(params, weights, lr - eps)) / (2 * eps)
        assert abs(g_lr) > 1e-8 and abs(fd - g_lr) <= 1e-6 * abs(g_lr), (fd, g_lr)


def test_per_parameter_lr_dict_gets_gradients():
    model, batches, query, params, weights = mlp_setup(2)
    lrs = {k: torch.tensor(0.05, dtype=DT, requires_grad=True) for k in params}
    pK, _ = unroll(model, params, mse_loss_with_weights(weights), batches, optimizer=sgd(lr=lrs))
    gs = torch.autograd.grad(outer_mlp(model, pK, query), list(lrs.values()))
    assert all(torch.isfinite(g) and g != 0 for g in gs)
    # a scalar lr equal to every entry gives the sum of the per-parameter lr gradients
    lr = torch.tensor(0.05, dtype=DT, requires_grad=True)
    pK, _ = unroll(model, params, mse_loss_with_weights(weights), batches, optimizer=sgd(lr=lr))
    (g,) = torch.autograd.grad(outer_mlp(model, pK, query), [lr])
    assert torch.allclose(g, sum(gs), rtol=1e-10)


# --------------------------------------------------------------------------- first order / truncate / checkpoint
def test_first_order_equals_hand_written():
    model, batches, query, params, weights = mlp_setup(2)
    lr = torch.tensor(0.05, dtype=DT, requires_grad=True)
    loss_fn = mse_loss_with_weights(weights)
    pK, _ = unroll(model, params, loss_fn, batches, optimizer=sgd(lr=lr), first_order=True)
    got = torch.autograd.grad(outer_mlp(model, pK, query), [*params.values(), lr])

    p = dict(params)
    for b in batches:  # by hand: gradients at detached copies, used as constants
        d = {k: v.detach().requires_grad_(True) for k, v in p.items()}
        gs = torch.autograd.grad(loss_fn(model, d, b), list(d.values()))
        p = {k: v - lr * g for (k, v), g in zip(p.items(), gs)}
    want = torch.autograd.grad(outer_mlp(model, p, query), [*params.values(), lr])
    assert rel_err(got, want) < 1e-12
    # and token weights inside loss_fn receive no gradient in first-order mode
    pK, _ = unroll(model, params, loss_fn, batches, optimizer=sgd(lr=lr), first_order=True)
    assert torch.autograd.grad(outer_mlp(model, pK, query), [weights], allow_unused=True)[0] is None


def test_truncate_differentiates_only_last_steps():
    K, k = 3, 1
    model, batches, query, params, weights = mlp_setup(K)
    lr = torch.tensor(0.05, dtype=DT, requires_grad=True)
    loss_fn = mse_loss_with_weights(weights)
    args = [*params.values(), weights, lr]

    def meta(**kw):
        pK, _ = unroll(model, params, loss_fn, batches, optimizer=sgd(lr=lr), **kw)
        return torch.autograd.grad(outer_mlp(model, pK, query), args)

    full, trunc_all = meta(), meta(truncate=K)
    assert rel_err(trunc_all, full) < 1e-12  # truncate=K is no truncation

    # by hand: K-k steps with no graph, their change added as a constant, then k full steps
    p = {n: v.detach() for n, v in params.items()}
    for b in batches[: K - k]:
        d = {n: v.requires_grad_(True) for n, v in {n: v.clone() for n, v in p.items()}.items()}
        gs = torch.autograd.grad(loss_fn(model, d, b), list(d.values()))
        p = {n: (v - lr.detach() * g).detach() for (n, v), g in zip(p.items(), gs)}
    p = {n: params[n] + (p[n] - params[n].detach()) for n in p}
    for b in batches[K - k :]:
        gs = torch.autograd.grad(loss_fn(model, p, b), list(p.values()), create_graph=True)
        p = {n: v - lr * g for (n, v), g in zip(p.items(), gs)}
    want = torch.autograd.grad(outer_mlp(model, p, query), args)
    got = meta(truncate=k)
    assert rel_err(got, want) < 1e-12
    assert rel_err(got, full) > 1e-4  # and it really is a different (cheaper) gradient


def test_checkpoint_gives_identical_gradients_and_recomputes():
    model, batches, query, params, weights = mlp_setup(3)
    lr = torch.tensor(0.01, dtype=DT, requires_grad=True)
    calls = {"n": 0}
    inner = mse_loss_with_weights(weights)

    def loss_fn(m, p, b):
        calls["n"] += 1
        return inner(m, p, b)

    args = [*params.values(), weights, lr]
    res = {}
    for ck in (False, True):
        calls["n"] = 0
        pK, _ = unroll(model, params, loss_fn, batches, optimizer=adamw(lr=lr), checkpoint=ck)
        res[ck] = torch.autograd.grad(outer_mlp(model, pK, query), args)
        res[(ck, "calls")] = calls["n"]
    assert rel_err(res[True], res[False]) < 1e-13
    assert res[(False, "calls")] == 3 and res[(True, "calls")] == 6  # each step re-run once in backward


# --------------------------------------------------------------------------- parity with higher
def higher_meta_grad(model, torch_opt, batches, query):
    higher = pytest.importorskip("higher")
    with higher.innerloop_ctx(model, torch_opt, copy_initial_weights=False) as (fmodel, dopt):
        for b in batches:
            dopt.step(ce_loss_module(fmodel, b))
        return torch.autograd.grad(ce_loss_module(fmodel, query), list(model.parameters()))


def ce_loss_module(fmodel, b):
    logits = fmodel(b["input_ids"])
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1), ignore_index=-100)


def transformer_setup(K: int, lead=()):
    torch.manual_seed(0)
    model = TinyTransformer().to(DT)
    gen = torch.Generator().manual_seed(0)
    batches = [lm_batch(16, 2, 8, gen, lead) for _ in range(K)]
    query = lm_batch(16, 2, 8, gen, lead)
    return model, batches, query


# higher 0.2.1 implements the pre-2018 Adam (eps added before the bias correction); with a tiny
# eps the two conventions coincide to far below the tolerance, so the unrolling itself is compared.
OPTS = {
    "sgd": (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.5), lambda: sgd(lr=0.1, momentum=0.5)),
    "adam": (lambda ps: torch.optim.Adam(ps, lr=0.01, eps=1e-14), lambda: adamw(lr=0.01, eps=1e-14, weight_decay=0.0)),
}


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("K", [1, 3])
def test_parity_with_higher(kind, K):
    model, batches, query = transformer_setup(K)
    params = dict(model.named_parameters())
    pK, _ = unroll(model, params, ce_loss, batches, optimizer=OPTS[kind][1]())
    ours = torch.autograd.grad(ce_loss(model, pK, query), list(params.values()))
    theirs = higher_meta_grad(model, OPTS[kind][0](model.parameters()), batches, query)
    assert rel_err(ours, theirs) < 1e-6


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_per_example_matches_loop_of_higher_runs(kind):
    M, K = 3, 2
    model, batches, query = transformer_setup(K, lead=(M,))
    params = dict(model.named_parameters())
    pK, _ = unroll(model, params, ce_loss, batches, optimizer=OPTS[kind][1](), per_example=True)
    assert all(v.shape == (M, *params[k].shape) for k, v in pK.items())
    outer = torch.func.vmap(lambda p, q: ce_loss(model, p, q))(pK, query).sum()
    ours = torch.autograd.grad(outer, list(params.values()))
    theirs = None
    for m in range(M):
        pick = lambda b: {k: v[m] for k, v in b.items()}  # noqa: E731
        g = higher_meta_grad(model, OPTS[kind][0](model.parameters()), [pick(b) for b in batches], pick(query))
        theirs = list(g) if theirs is None else [a + b for a, b in zip(theirs, g)]
    assert rel_err(ours, theirs) < 1e-6


def test_per_example_token_weights_and_first_order():
    """Per-example token weights (in the batch) get the same gradient as separate unrolls."""
    M, K = 2, 2
    torch.manual_seed(0)
    model = TinyTransformer().to(DT)
    gen = torch.Generator().manual_seed(3)
    batches = [lm_batch(16, 2, 8, gen, (M,)) for _ in range(K)]
    query = lm_batch(16, 2, 8, gen, (M,))
    w = (torch.rand(M, K, 2, 8, generator=gen, dtype=DT) + 0.5).requires_grad_(True)
    for b, i in zip(batches, range(K)):
        b["token_weights"] = w[:, i]
    params = dict(model.named_parameters())
    for first_order in (False, True):
        pK, _ = unroll(model, params, lm_loss, batches, optimizer=adamw(lr=0.01), per_example=True, first_order=first_order)
        outer = torch.func.vmap(lambda p, q: lm_loss(model, p, q))(pK, query).sum()
        ours = torch.autograd.grad(outer, [w, *params.values()], allow_unused=True)
        loop = 0.0
        for m in range(M):
            bm = [{k: v[m] for k, v in b.items()} for b in batches]
            pm, _ = unroll(model, params, lm_loss, bm, optimizer=adamw(lr=0.01), first_order=first_order)
            loop = loop + lm_loss(model, pm, {k: v[m] for k, v in query.items()})
        theirs = torch.autograd.grad(loop, [w, *params.values()], allow_unused=True)
        if first_order:
            assert ours[0] is None or ours[0].abs().max() == 0  # weights only act through inner grads
            assert theirs[0] is None
            assert rel_err(ours[1:], theirs[1:]) < 1e-10
        else:
            assert rel_err(ours, theirs) < 1e-10


# --------------------------------------------------------------------------- HF Llama, LoRA, model untouched
def test_tiny_llama_meta_gradient_vs_finite_differences(monkeypatch):
    make_llama_exact_float64(monkeypatch)
    model = tiny_llama()
    assert model.config._attn_implementation == "sdpa"
    gen = torch.Generator().manual_seed(0)
    batches = [lm_batch(64, 2, 8, gen) for _ in range(2)]
    query = lm_batch(64, 2, 8, gen)
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if n in names}
    w = (torch.rand(2, 8, generator=gen, dtype=DT) + 0.5).requires_grad_(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def F_(p0, w_):
        pK, _ = unroll(model, p0, lambda m, p, b: lm_loss(m, p, b, w_), batches, optimizer=adamw(lr=1e-2, eps=1e-3, weight_decay=0.0))
        return lm_loss(model, pK, query)

    *g_p, g_w = torch.autograd.grad(F_(params, w), [*params.values(), w])
    eps = 1e-6
    with torch.no_grad():
        vs = {k: torch.randn(v.shape, generator=gen, dtype=DT) for k, v in params.items()}
        fd = (F_({k: params[k] + eps * vs[k] for k in params}, w) - F_({k: params[k] - eps * vs[k] for k in params}, w)) / (2 * eps)
        an = sum((g * vs[k]).sum() for g, k in zip(g_p, params))
        assert abs(fd - an) <= 1e-6 * abs(an), (fd, an)
        vw = torch.randn(w.shape, generator=gen, dtype=DT)
        fd = (F_(params, w + eps * vw) - F_(params, w - eps * vw)) / (2 * eps)
        an = (g_w * vw).sum()
        assert abs(an) > 1e-9 and abs(fd - an) <= 1e-6 * abs(an), (fd, an)
    # the model object is untouched: same tensors, attention switch restored
    assert model.config._attn_implementation == "sdpa"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_sdpa_float32_needs_switch_and_unroll_provides_it():
    """In float32 the CPU SDPA kernel has no double backward; unroll must switch it off."""
    from metacl.engine import find_non_double_differentiable, second_order_attention

    model = tiny_llama(dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    batches = [lm_batch(64, 2, 8, gen)]
    params = {n: p for n, p in model.named_parameters() if "layers.0" in n}
    culprit = find_non_double_differentiable(model, params, lm_loss, batches[0])
    assert culprit is not None and "self_attn" in culprit
    with second_order_attention(model):
        assert model.config._attn_implementation == "eager"
        assert find_non_double_differentiable(model, params, lm_loss, batches[0]) is None
    assert model.config._attn_implementation == "sdpa"
    pK, _ = unroll(model, params, lm_loss, batches, optimizer=sgd(lr=0.1))
    g = torch.autograd.grad(lm_loss(model, pK, lm_batch(64, 2, 8, gen)), list(params.values()))
    assert all(torch.isfinite(x).all() for x in g)


def test_clear_error_for_module_without_double_backward():
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x * g

    class OnceDiff(torch.nn.Module):
        def forward(self, x):
            return Square.apply(x)

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), OnceDiff(), torch.nn.Linear(4, 2)).to(DT)
    loss = functional_loss(F.mse_loss, inputs="x", targets="y")
    batches = mlp_batches(2, 4, torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    with pytest.raises(MetaclError, match=r"module 1 \(OnceDiff\) cannot be differentiated twice"):
        unroll(model, params, loss, batches, optimizer=sgd(lr=0.1))
    pK, _ = unroll(model, params, loss, batches, optimizer=sgd(lr=0.1), first_order=True)  # first order is fine
    assert pK["0.weight"].requires_grad


def test_lora_only_inner_loop_touches_only_adapters():
    peft = pytest.importorskip("peft")
    base = tiny_llama(dtype=torch.float32)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert params and all(p.requires_grad for p in params.values())
    gen = torch.Generator().manual_seed(0)
    batches = [lm_batch(64, 2, 8, gen) for _ in range(2)]
    w = torch.rand(2, 8, generator=gen).requires_grad_(True)
    pK, _ = unroll(model, params, lambda m, p, b: lm_loss(m, p, b, w), batches, optimizer=adamw(lr=1e-2))
    lm_loss(model, pK, lm_batch(64, 2, 8, gen)).backward()
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert base.config._attn_implementation == "sdpa"


# --------------------------------------------------------------------------- losses and errors
def test_token_nll_alignment_and_weighted_loss():
    model = tiny_llama()
    gen = torch.Generator().manual_seed(0)
    b = lm_batch(64, 2, 6, gen)
    params = dict(model.named_parameters())
    nll = token_nll(model, params, b)
    assert nll.shape == b["input_ids"].shape
    assert torch.all(nll[:, 0] == 0) and torch.all(nll[:, -1] == 0)  # no prediction / label -100
    logits = model(input_ids=b["input_ids"]).logits
    want = -logits[0, 2].log_softmax(-1)[b["labels"][0, 3]]  # position 3 is predicted from logits at 2
    assert torch.allclose(nll[0, 3], want)
    mean = lm_loss(model, params, b)
    assert torch.allclose(mean, nll.sum() / (b["labels"][:, 1:] != -100).sum())
    w = torch.zeros_like(nll)
    w[1, 2] = 1.0
    assert torch.allclose(lm_loss(model, params, b, w), nll[1, 2])
    with pytest.raises(MetaclError, match="token_weights has shape"):
        lm_loss(model, params, b, torch.ones(2, 5, dtype=DT))


def test_bad_inputs_raise_one_line_errors():
    model, batches, query, params, weights = mlp_setup(2)
    loss_fn = mse_loss_with_weights(weights)
    cases = [
        dict(params=params, batches=[], kw={}),
        dict(params={}, batches=batches, kw={}),
        dict(params=params, batches=batches, kw={"truncate": 5}),
        dict(params=params, batches=batches, kw={"per_example": True, "checkpoint": True}),
        dict(params=params, batches=batches, kw={"optimizer": torch.optim.SGD}),
    ]
    for c in cases:
        with pytest.raises(MetaclError) as e:
            unroll(model, c["params"], loss_fn, c["batches"], **c["kw"])
        assert "\n" not in str(e.value)
    with pytest.raises(MetaclError, match="must return a scalar"):
        unroll(model, params, lambda m, p, b: torch.func.functional_call(m, p, (b["x"],)), batches)
    with pytest.raises(MetaclError, match="negative"):
        sgd(lr=-1.0)
    with pytest.raises(MetaclError, match="leading meta-example dim"):
        bad = [{"x": torch.zeros(2, 3, dtype=DT), "y": torch.zeros(3, 2, dtype=DT)}]
        unroll(model, params, loss_fn, bad, per_example=True)


def test_model_unchanged_and_params_not_mutated():
    model, batches, query, params, weights = mlp_setup(3)
    model.train()
    snap_model = {k: v.clone() for k, v in model.state_dict().items()}
    snap_params = {k: v.detach().clone() for k, v in params.items()}
    for kw in ({}, {"first_order": True}, {"checkpoint": True}, {"truncate": 1}):
        pK, _ = unroll(model, params, mse_loss_with_weights(weights), batches, optimizer=adamw(lr=0.1), **kw)
        assert any(not torch.equal(pK[k], snap_params[k]) for k in pK)  # it did train
    assert model.training
    assert all(torch.equal(snap_model[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(snap_params[k], v) for k, v in params.items())
    assert all(p.grad is None for p in model.parameters())


def test_elementary_layer_norm_matches_kernel():
    """The per_example work-around must compute exactly what F.layer_norm computes."""
    from metacl.engine.vmap_fixes import ElementaryLayerNorm, layer_norm_elementary

    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen, dtype=DT) for s in ((3, 5, 6), (6,), (6,)))
    assert torch.allclose(layer_norm_elementary(x, (6,), w, b), F.layer_norm(x, (6,), w, b), rtol=0, atol=1e-13)
    with ElementaryLayerNorm():
        assert torch.allclose(torch.nn.LayerNorm(6).to(DT)(x), F.layer_norm(x.clone(), (6,)), atol=1e-13)


def test_per_example_on_hf_llama_matches_separate_unrolls(monkeypatch):
    """HF Llama under vmap: inner loops and the outer loss (via per_example_loss) both work."""
    from metacl.engine import per_example_loss

    make_llama_exact_float64(monkeypatch)  # else HF's float32 upcasts round differently under vmap
    M = 2
    model = tiny_llama()
    gen = torch.Generator().manual_seed(0)
    docs, query = lm_batch(64, 1, 8, gen, (M,)), lm_batch(64, 1, 8, gen, (M,))
    docs["token_weights"] = (torch.rand(M, 1, 8, generator=gen, dtype=DT) + 0.5).requires_grad_(True)
    params = {n: p for n, p in model.named_parameters() if "layers.1" in n}
    pK, _ = unroll(model, params, lm_loss, [docs], optimizer=adamw(lr=1e-2), per_example=True)
    ours = torch.autograd.grad(per_example_loss(model, pK, query).sum(), [docs["token_weights"], *params.values()])
    loop = sum(
        lm_loss(model, unroll(model, params, lm_loss, [{k: v[m] for k, v in docs.items()}], optimizer=adamw(lr=1e-2))[0],
                {k: v[m] for k, v in query.items()})
        for m in range(M)
    )
    theirs = torch.autograd.grad(loop, [docs["token_weights"], *params.values()])
    assert rel_err(ours, theirs) < 1e-10
    assert model.config._attn_implementation == "sdpa"
