"""`engine.compiled_unroll_loss` (issue 18): the compiled meta-step computes what `unroll` does.

The compiled path computes its inner gradients with `torch.func.grad` inside one compiled
graph and differentiates that graph once; `unroll` records a create_graph backward and
differentiates through it. In float64 both must give the same outer losses and the same
meta-gradients (w.r.t. token weights carried by the batch and a tensor learning rate) up to
rounding, also with only the read embedding rows in the inner loop. One inductor compile in this
module on a tiny model (~1 minute on 2 cores); the update formulas are checked without compiling.
"""

from __future__ import annotations

import pytest
import torch

from engine_fixtures import TinyTransformer, lm_batch, rel_err, tiny_llama
from metacl.engine import adamw, lm_loss, sgd, unroll
from metacl.engine import active_rows as rows_mod
from metacl.engine.compiled_unroll import _updater, compiled_unroll_loss
from metacl.errors import MetaclError

DT = torch.float64


def weighted(model, params, batch):
    return lm_loss(model, params, {k: batch[k] for k in ("input_ids", "attention_mask", "labels")},
                   token_weights=batch["token_weights"])


def query_loss(model, params, batch):
    return lm_loss(model, params, batch)


@pytest.mark.parametrize("opt", [adamw(lr=0.05, weight_decay=0.1), adamw(lr=0.05), sgd(lr=0.3), sgd(lr=0.3, momentum=0.9, weight_decay=0.01)])
def test_update_formulas_equal_the_optimizers(opt):
    torch.manual_seed(0)
    p = {"a": torch.randn(5, 3, dtype=DT), "b": torch.randn(4, dtype=DT)}
    grads = [{k: torch.randn_like(v) for k, v in p.items()} for _ in range(3)]
    grads[0]["a"][1] = 0.0  # a row with no gradient: AdamW's safe sqrt
    update, lr = _updater(opt)
    ref_p, ref_s = dict(p), opt.init(p)
    mine_p = dict(p)
    zeros = {k: torch.zeros_like(v) for k, v in p.items()}
    mine_s = {"m": zeros, "v": zeros}
    for step, g in enumerate(grads):
        ref_p, ref_s = opt.update(ref_p, g, ref_s, step)
        mine_p, mine_s = update(mine_p, g, mine_s, step, lr)
        for k in p:
            assert torch.allclose(mine_p[k], ref_p[k], rtol=1e-13, atol=1e-15), (step, k)


def test_unsupported_settings_say_so():
    model = tiny_llama(hidden=16, layers=1)
    with pytest.raises(MetaclError, match="steps"):
        compiled_unroll_loss(model, weighted, query_loss, adamw(lr=0.1), steps=0)
    with pytest.raises(MetaclError, match="not supported"):
        compiled_unroll_loss(model, weighted, query_loss, object(), steps=1)
    with pytest.raises(MetaclError, match="dicts"):
        compiled_unroll_loss(model, weighted, query_loss, adamw(lr={"x": 0.1}), steps=1)


def test_fixed_size_rows_pad_with_unread_rows():
    params = {"e": torch.zeros(10, 2)}
    out = rows_mod.fixed_size({"e": torch.tensor([7, 2, 2, 5])}, params, 6)["e"]
    assert out.tolist() == sorted(out.tolist()) and len(set(out.tolist())) == 6
    assert {2, 5, 7} <= set(out.tolist())
    assert rows_mod.fixed_size({"e": torch.tensor([1])}, params, 50)["e"].tolist() == list(range(10))


def _setup(params_need_grad: bool):
    # a plain-PyTorch LM: every op in float64 (HF Llama rounds through float32 in RMSNorm and
    # rotary, and the compiler keeps those in float64, so it would differ from eager by ~1e-8)
    torch.manual_seed(0)
    model = TinyTransformer(vocab=64, d=16, heads=2, layers=1, max_len=16).to(DT)
    for p in model.parameters():
        p.requires_grad_(False)
    params = {n: p.detach().requires_grad_(params_need_grad) for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    M, T = 2, 12
    docs = lm_batch(64, M, T, gen)
    docs["input_ids"][:, :4] = 5  # repeated tokens: fewer distinct rows than positions
    query = lm_batch(64, M, 6, gen)
    w = torch.rand(M, T, dtype=DT, generator=gen).requires_grad_(True)
    lr = torch.tensor(0.05, dtype=DT, requires_grad=True)
    inner = {**{k: v[:, None] for k, v in docs.items()}, "token_weights": w[:, None]}
    outer = {k: v[:, None] for k, v in query.items()}
    return model, params, inner, outer, w, lr, M, T


def _reference(model, params, inner, outer, lr, M, first_order=False):
    """unroll's per-example loop (the whole embedding in the inner loop), then the query losses."""
    per_m, _ = unroll(model, params, weighted, [inner] * 2, optimizer=adamw(lr=lr), per_example=True,
                      return_state=False, stack=False, first_order=first_order)
    return torch.stack([query_loss(model, per_m[m], {k: v[m] for k, v in outer.items()}) for m in range(M)])


# Inductor (the compiler's own numerics) runs the token-weighting case, the graph `--compile` runs; the MAML case,
# which also differentiates w.r.t. every parameter, runs under aot_eager (the captured graph without codegen:
# its inductor compile alone costs ~1.5 minutes of the suite).
@pytest.mark.parametrize("params_need_grad,backend", [(False, "inductor"), (True, "aot_eager")], ids=["token-weighting", "maml"])
def test_compiled_meta_gradient_equals_unroll_float64(params_need_grad, backend, monkeypatch):
    from metacl.engine import compiled_unroll

    monkeypatch.setattr(compiled_unroll, "BACKEND", backend)
    model, params, inner, outer, w, lr, M, T = _setup(params_need_grad)
    wrt = [w, lr] + ([params[n] for n in params] if params_need_grad else [])
    ref = _reference(model, params, inner, outer, lr, M)
    ref_g = torch.autograd.grad(ref.mean(), wrt)

    step = compiled_unroll_loss(model, weighted, query_loss, adamw(lr=0.05), steps=2)
    rows = rows_mod.fixed_size({"tok.weight": inner["input_ids"].reshape(-1)}, params, M * T)
    assert rows["tok.weight"].numel() == M * T < 64
    out = step(params, inner, outer, lr=lr, active_rows=rows)
    assert out.shape == (M, 1)
    got = torch.autograd.grad(out[:, 0].mean(), wrt)
    assert torch.allclose(out[:, 0], ref, rtol=1e-12, atol=0)
    for name, a, b in zip(["w", "lr", *params], got, ref_g):
        assert float(b.abs().sum()) > 0, name
        assert rel_err([a], [b]) < 1e-9, name
    with pytest.raises(MetaclError, match="leading example dim"):
        step(params, inner, {k: v[:1] for k, v in outer.items()}, lr=lr, active_rows=rows)


def test_compiled_first_order_equals_unroll(monkeypatch):
    # first order: the inner gradients are constants (the captured graph; aot_eager runs it without codegen)
    from metacl.engine import compiled_unroll

    monkeypatch.setattr(compiled_unroll, "BACKEND", "aot_eager")
    model, params, inner, outer, w, lr, M, T = _setup(True)
    wrt = [lr] + [params[n] for n in params]
    ref_g = torch.autograd.grad(_reference(model, params, inner, outer, lr, M, first_order=True).mean(), wrt)
    step = compiled_unroll_loss(model, weighted, query_loss, adamw(lr=0.05), steps=2, first_order=True)
    out = step(params, inner, outer, lr=lr)
    got = torch.autograd.grad(out[:, 0].mean(), wrt)
    for a, b in zip(got, ref_g):
        assert rel_err([a], [b]) < 1e-10
    second = compiled_unroll_loss(model, weighted, query_loss, adamw(lr=0.05), steps=2)(params, inner, outer, lr=lr)
    gs = torch.autograd.grad(second[:, 0].mean(), wrt)
    assert rel_err(gs, got) > 1e-3  # the second-order terms are really dropped
