"""The token-weighting meta-step's fast path (issue 18) computes the same numbers as the plain one.

Each speed-up is compared with the straightforward computation, in float64, so a tolerance of
1e-12 means "the same computation up to rounding":
- the compiled AdamW kernels (`engine.adamw_kernels`) against the eager ones, in second-order,
  first-order and truncated unrolls, with rows of zero second moment, and a failing compile
  falling back to the eager kernels with one warning;
- `unroll(active_rows=...)` (embedding rows no document reads left out of the inner loop)
  against the full inner loop: inner losses, returned params and states, meta-gradients
  w.r.t. token weights and initial params, per example (loop and vmap) and not;
- `unroll(stack=False)` against the stacked result; `adamw`'s flat grouped update where a caller
  asks for gradients w.r.t. params between two unrolls or two `update` calls;
- `meta_objective` end to end against a reference written as it was before these changes.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from engine_fixtures import TinyTransformer, lm_batch, rel_err, tiny_llama, untied_toy_lm
from metacl.engine import adamw, adamw_kernels, input_embedding_rows, lm_loss, sgd, unroll
from metacl.errors import MetaclError

DT = torch.float64


@pytest.fixture
def compiled_everywhere(monkeypatch):
    """Compiled kernels for every tensor size (the tiny test models are below MIN_NUMEL)."""
    monkeypatch.setattr(adamw_kernels, "MIN_NUMEL", 0)
    calls = {"fwd": 0, "bwd": 0}
    fwd, bwd = adamw_kernels.forward, adamw_kernels.backward

    def count_fwd(*a):
        out = fwd(*a)
        calls["fwd"] += out is not None
        return out

    def count_bwd(*a):
        out = bwd(*a)
        calls["bwd"] += out is not None
        return out

    monkeypatch.setattr(adamw_kernels, "forward", count_fwd)
    monkeypatch.setattr(adamw_kernels, "backward", count_bwd)
    yield calls
    adamw_kernels.enable()


def setup_lm(K: int, M: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    model = TinyTransformer(vocab=24).to(DT)
    gen = torch.Generator().manual_seed(seed)
    lead = () if M is None else (M,)
    batches = [lm_batch(16, 2, 8, gen, lead) for _ in range(K)]  # tokens < 16: rows 16..23 never get a gradient
    query = lm_batch(16, 2, 8, gen, lead)
    w = (torch.rand(*lead, K, 2, 8, generator=gen, dtype=DT) + 0.5).requires_grad_(True)
    for i, b in enumerate(batches):
        b["token_weights"] = w[..., i, :, :]
    return model, batches, query, w


def meta(model, batches, query, w, opt, params=None, **kw):
    params = dict(model.named_parameters()) if params is None else params
    pK, _ = unroll(model, params, lm_loss, batches, optimizer=opt, **kw)
    loss = lm_loss(model, pK, query)
    targets = [w] + [p for p in params.values() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, targets, allow_unused=True)


@pytest.mark.parametrize("mode", [{}, {"first_order": True}, {"truncate": 2}])
def test_compiled_adamw_kernels_give_the_eager_meta_gradients(compiled_everywhere, mode):
    model, batches, query, w = setup_lm(3)
    opt = lambda: adamw(lr=0.01, eps=1e-3, weight_decay=0.1)  # noqa: E731 - large eps: derivative far from 0
    loss_c, ours = meta(model, batches, query, w, opt(), **mode)
    assert compiled_everywhere["fwd"] > 0 and (mode.get("first_order") or compiled_everywhere["bwd"] > 0)
    adamw_kernels.disable()
    loss_e, ref = meta(model, batches, query, w, opt(), **mode)
    if mode.get("first_order"):
        assert ours[0] is None and ref[0] is None
        ours, ref = ours[1:], ref[1:]
    assert abs(float(loss_c - loss_e)) < 1e-12 * abs(float(loss_e))
    assert rel_err(ours, ref) < 1e-12
    # the comparison can fail: another beta is detected
    _, wrong = meta(model, batches, query, w, adamw(lr=0.01, eps=1e-3, weight_decay=0.1, betas=(0.8, 0.999)), **mode)
    wrong = wrong[1:] if mode.get("first_order") else wrong
    assert rel_err(ref, wrong) > 1e-6


def test_compiled_adamw_kernels_zero_second_moment_rows_and_frozen_params(compiled_everywhere):
    """Frozen theta_0 (token weighting's case) and embedding rows with v' = 0: finite and equal."""
    model, batches, query, w = setup_lm(2)
    frozen = {k: v.detach() for k, v in model.named_parameters()}
    _, ours = meta(model, batches, query, w, adamw(lr=0.01, eps=1e-10), params=frozen)
    assert compiled_everywhere["bwd"] > 0
    adamw_kernels.disable()
    _, ref = meta(model, batches, query, w, adamw(lr=0.01, eps=1e-10), params=frozen)
    assert torch.isfinite(ours[0]).all() and float(ref[0].abs().sum()) > 0
    assert rel_err(ours, ref) < 1e-12


def test_failing_compile_warns_once_and_falls_back_to_eager(monkeypatch):
    monkeypatch.setattr(adamw_kernels, "MIN_NUMEL", 0)
    monkeypatch.setattr(adamw_kernels, "_compiled", {})
    monkeypatch.setitem(adamw_kernels._state, "failed", None)

    def broken(*a, **k):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    model, batches, query, w = setup_lm(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, ours = meta(model, batches, query, w, adamw(lr=0.01, eps=1e-3))
    msgs = [str(c.message) for c in caught if "compiling the AdamW step failed" in str(c.message)]
    assert len(msgs) == 1 and "no C++ compiler here" in msgs[0]
    assert not adamw_kernels.usable(torch.zeros(4))
    monkeypatch.setitem(adamw_kernels._state, "failed", None)
    adamw_kernels.disable()
    try:
        _, ref = meta(model, batches, query, w, adamw(lr=0.01, eps=1e-3))
    finally:
        adamw_kernels.enable()
    assert rel_err(ours, ref) < 1e-14


def test_flat_grouped_update_gives_gradients_wrt_params_handed_out(compiled_everywhere):
    """`adamw` updates all tensors as one flat tensor; params a caller holds (between two unrolls, or
    between two direct `update` calls) still get their full gradient (the flat shortcut stays inside one unroll)."""
    model, batches, query, w = setup_lm(2)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    opt = lambda: adamw(lr=0.01, eps=1e-3)  # noqa: E731

    def chained():
        p1, s1 = unroll(model, params, lm_loss, batches[:1], optimizer=opt())
        p2, _ = unroll(model, p1, lm_loss, batches[1:], optimizer=opt(), state=s1, start_step=1)
        return torch.autograd.grad(lm_loss(model, p2, query), [w, *p1.values(), *s1["exp_avg"].values()])

    def direct():
        o = opt()
        p1, s1 = o.update(params, {k: torch.sin(v) * w.sum() for k, v in params.items()}, o.init(params), 0)
        p2, _ = o.update(p1, {k: torch.cos(v) for k, v in p1.items()}, s1, 1)
        return torch.autograd.grad(lm_loss(model, p2, query), [w, *p1.values()])

    ours = chained(), direct()
    assert compiled_everywhere["fwd"] > 0
    adamw_kernels.disable()
    ref = chained(), direct()
    for a, b in zip(ours, ref):
        assert float(sum(g.abs().sum() for g in b)) > 0
        assert rel_err(a, b) < 1e-12


# --------------------------------------------------------------------------- active rows

def untied_llama():
    return tiny_llama(hidden=16, layers=1, vocab=40, tie_word_embeddings=False)


def llama_batches(K: int, M: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    batches = [lm_batch(20, 1, 6, gen, (M,)) for _ in range(K)]  # ids < 20 of a 40-token vocabulary
    w = (torch.rand(M, K, 1, 6, generator=gen, dtype=DT) + 0.5).requires_grad_(True)
    for i, b in enumerate(batches):
        b["token_weights"] = w[:, i]
    query = lm_batch(40, 1, 5, gen, (M,))  # the query reads other tokens too
    return batches, query, w


def per_example_meta(model, params, batches, query, w, opt, **kw):
    M = w.shape[0]
    pK, sK = unroll(model, params, lm_loss, batches, optimizer=opt, per_example=kw.pop("per_example", True), **kw)
    p_list = pK if isinstance(pK, list) else [{k: v[m] for k, v in pK.items()} for m in range(M)]
    loss = torch.stack([lm_loss(model, p_list[m], {k: v[m] for k, v in query.items()}) for m in range(M)]).sum()
    targets = [w] + [p for p in params.values() if p.requires_grad]
    return loss.detach(), p_list, sK, torch.autograd.grad(loss, targets, allow_unused=True)


@pytest.mark.parametrize("impl", ["loop", "vmap"])
@pytest.mark.parametrize("opt", [lambda: adamw(lr=0.02, eps=1e-3), lambda: sgd(lr=0.3, momentum=0.5)])
def test_active_rows_equal_the_full_inner_loop(impl, opt):
    model = untied_llama()
    batches, query, w = llama_batches(K=2, M=2)
    params = {k: v.detach() for k, v in model.named_parameters()}  # frozen theta_0, as in token weighting
    rows = input_embedding_rows(model, params, batches)
    (name, r), = rows.items()
    assert name == "model.embed_tokens.weight" and 0 < r.numel() <= 20 < params[name].shape[0]
    full = per_example_meta(model, params, batches, query, w, opt(), per_example=impl)
    fast = per_example_meta(model, params, batches, query, w, opt(), per_example=impl, active_rows=rows)
    assert abs(float(fast[0] - full[0])) < 1e-12 * abs(float(full[0]))
    for pf, pr in zip(fast[1], full[1]):
        assert pf.keys() == pr.keys() and all(pf[k].shape == pr[k].shape for k in pr)
        assert rel_err(list(pf.values()), list(pr.values())) < 1e-13
    flat = lambda s: torch.utils._pytree.tree_leaves(s)  # noqa: E731
    assert rel_err(flat(fast[2]), flat(full[2])) < 1e-13 if flat(full[2]) else flat(fast[2]) == []
    assert float(full[3][0].abs().sum()) > 0
    assert rel_err(fast[3], full[3]) < 1e-12
    # the comparison can fail: leaving out a row that does get a gradient changes the meta-gradient
    wrong = {name: r[1:]}
    bad = per_example_meta(model, params, batches, query, w, opt(), per_example=impl, active_rows=wrong)
    assert rel_err(bad[3], full[3]) > 1e-6


@pytest.mark.parametrize("mode", [{}, {"truncate": 1}, {"first_order": True}, {"checkpoint": True}])
def test_active_rows_with_params_that_require_grad(mode):
    """MAML-like: the meta-gradient w.r.t. the initial params (full embedding included) is unchanged."""
    model = untied_llama()
    batches, query, w = llama_batches(K=2, M=1)
    b1 = [{k: v[0] for k, v in b.items()} for b in batches]
    q1 = {k: v[0] for k, v in query.items()}
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    rows = input_embedding_rows(model, params, b1)
    res = []
    for ar in (None, rows):
        pK, sK = unroll(model, params, lm_loss, b1, optimizer=adamw(lr=0.02, eps=1e-3), active_rows=ar, **mode)
        loss = lm_loss(model, pK, q1)
        targets = ([] if mode.get("first_order") else [w]) + list(params.values())
        res.append((loss.detach(), torch.autograd.grad(loss, targets), sK))
    assert abs(float(res[0][0] - res[1][0])) < 1e-12 * abs(float(res[0][0]))
    assert rel_err(res[1][1], res[0][1]) < 1e-12
    flat = torch.utils._pytree.tree_leaves
    assert rel_err(flat(res[1][2]), flat(res[0][2])) < 1e-13


def test_stack_false_lists_the_stacked_result():
    model = untied_llama()
    batches, query, w = llama_batches(K=2, M=3)
    params = {k: v.detach() for k, v in model.named_parameters()}
    for impl in ("loop", "vmap"):
        stacked = per_example_meta(model, params, batches, query, w, adamw(lr=0.02, eps=1e-3), per_example=impl)
        listed = per_example_meta(model, params, batches, query, w, adamw(lr=0.02, eps=1e-3), per_example=impl,
                                  stack=False)
        assert isinstance(unroll(model, params, lm_loss, batches, per_example=impl, stack=False)[0], list)
        assert abs(float(stacked[0] - listed[0])) < 1e-12 * abs(float(stacked[0]))
        assert rel_err(stacked[3], listed[3]) < 1e-12
        assert len(listed[2]) == 3 and rel_err(torch.utils._pytree.tree_leaves(listed[2][1]),
                                               [t[1] for t in torch.utils._pytree.tree_leaves(stacked[2])]) < 1e-13


def test_active_rows_refuses_what_it_cannot_do_exactly():
    model = untied_llama()
    batches, _, _ = llama_batches(K=1, M=1)
    b1 = [{k: v[0] for k, v in b.items()} for b in batches]
    params = {k: v.detach() for k, v in model.named_parameters()}
    rows = input_embedding_rows(model, params, b1)
    with pytest.raises(MetaclError, match="without weight decay"):
        unroll(model, params, lm_loss, b1, optimizer=adamw(lr=0.01, weight_decay=0.1), active_rows=rows)
    with pytest.raises(MetaclError, match="fresh optimizer state"):
        opt = adamw(lr=0.01)
        unroll(model, params, lm_loss, b1, optimizer=opt, state=opt.init(params), active_rows=rows)
    with pytest.raises(MetaclError, match="not in params"):
        unroll(model, params, lm_loss, b1, active_rows={"nope": rows["model.embed_tokens.weight"]})
    with pytest.raises(MetaclError, match="outside"):
        unroll(model, params, lm_loss, b1, active_rows={"model.embed_tokens.weight": torch.tensor([0, 40])})


def test_input_embedding_rows_is_empty_where_every_row_gets_a_gradient():
    tied = tiny_llama(hidden=16, layers=1, vocab=40, tie_word_embeddings=True)
    batches, _, _ = llama_batches(K=1, M=1)
    assert input_embedding_rows(tied, dict(tied.named_parameters()), batches) == {}  # the LM head uses every row
    untied = untied_llama()
    no_emb = {k: v for k, v in untied.named_parameters() if "embed" not in k}  # e.g. LoRA: the embedding is not trained
    assert input_embedding_rows(untied, no_emb, batches) == {}
    assert list(input_embedding_rows(untied, dict(untied.named_parameters()), batches)) == ["model.embed_tokens.weight"]


# --------------------------------------------------------------------------- meta_objective end to end

def reference_meta_objective(weighter, model, tokenizer, examples, cfg, nf_probes=()):
    """`meta_objective` as written before issue 18's fast path: full inner loop, stacked params."""
    from metacl.engine import second_order_attention
    from metacl.meta.options import doc_loss
    from metacl.meta.train_token_weighting import _inner_optimizer, encode_document, encode_probe, inner_params, pad

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    docs = pad([encode_document(tokenizer, e.document, cfg.max_length) for e in examples], pad_id)
    label_mask = (docs["labels"] != -100).to(DT)
    label_mask[:, 0] = 0
    w = weighter(docs["input_ids"], docs["attention_mask"]) * label_mask
    inner = {k: v[:, None] for k, v in docs.items()}
    inner["token_weights"] = w[:, None]
    params = inner_params(model, cfg.mode)
    with second_order_attention(model):
        pK, _ = unroll(model, params, doc_loss(cfg.inner_norm), [inner] * cfg.inner_steps,
                       optimizer=_inner_optimizer(cfg), truncate=cfg.truncate, per_example=True)
        q_losses, r_losses = [], []
        for m, e in enumerate(examples):
            p_m = {k: v[m] for k, v in pK.items()}
            q_losses.append(lm_loss(model, p_m, pad([encode_probe(tokenizer, e.prefix, e.object)], pad_id)))
            probes = nf_probes[m * cfg.retention_probes:(m + 1) * cfg.retention_probes] or nf_probes[:cfg.retention_probes]
            r_losses.append(lm_loss(model, p_m, pad([encode_probe(tokenizer, p, o) for p, o in probes], pad_id)))
    return torch.stack(q_losses).mean() + cfg.retention * torch.stack(r_losses).mean()


@pytest.fixture(scope="module")
def toy_untied(tmp_path_factory):
    return untied_toy_lm(tmp_path_factory.mktemp("toylm"), DT)


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_meta_objective_fast_path_equals_the_reference(toy_untied, opt, monkeypatch):
    from metacl.meta.token_weighting import TokenWeighter
    from metacl.meta.train_token_weighting import MetaConfig, MetaExample, meta_objective
    import metacl.engine as eng

    model, tok = toy_untied
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    tw = TokenWeighter.from_base_lm(model, tok).to(DT)
    with torch.no_grad():
        tw.head.weight.normal_(0, 0.3)
        tw.head.bias.zero_()
    ex = [MetaExample("apple river key red stone cloud.", "key", "red"),
          MetaExample("paper key blue window garden.", "key", "blue")]
    probes = [("apple", "river"), ("stone", "cloud"), ("paper", "window"), ("garden", "silver")]
    cfg = MetaConfig(inner_steps=2, inner_lr=0.05 if opt == "adamw" else 0.5, inner_optimizer=opt, retention=0.5,
                     retention_probes=2, meta_batch=2, max_length=32)
    seen = {}
    real = eng.unroll

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr("metacl.engine.unroll", spy)
    monkeypatch.setattr(adamw_kernels, "MIN_NUMEL", 0)  # the fast path with compiled kernels on this tiny model
    tw.zero_grad()
    out = meta_objective(tw, model, tok, ex, cfg, probes)
    out["loss"].backward()
    fast = [p.grad.clone() for p in tw.parameters()]
    rows = seen["active_rows"]["model.embed_tokens.weight"]
    assert seen["stack"] is False and 0 < rows.numel() < model.config.vocab_size
    adamw_kernels.disable()
    try:
        tw.zero_grad()
        ref_loss = reference_meta_objective(tw, model, tok, ex, cfg, probes)
        ref_loss.backward()
    finally:
        adamw_kernels.enable()
    ref = [p.grad.clone() for p in tw.parameters()]
    assert abs(float(out["loss"] - ref_loss)) < 1e-12 * abs(float(ref_loss))
    assert float(sum(g.abs().sum() for g in ref)) > 0
    assert rel_err(fast, ref) < 1e-10
