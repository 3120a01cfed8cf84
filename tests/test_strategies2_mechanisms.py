"""Defining mechanism of each Baselines II strategy (spg, das, osft, olora, progressive, tasl).

Every test drives the strategy hooks directly on a tiny Llama (hidden 32, 2 layers, vocab 64) in
the order the training loop calls them, so each runs in well under a second.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from metacl.strategies.base import TrainContext

CHARS = " abcdefghijklmnopqrstuvwxyz.,ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class Tok:
    """Character tokenizer: id 0 pads (and stands for unknown characters)."""

    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, text, truncation=False, max_length=None, **_):
        ids = [max(0, CHARS.find(c)) for c in text][: max_length or None]
        return {"input_ids": ids}


OLD = ["rivers run to the sea.", "old mountains stand tall.", "ships sail at dawn.", "forests grow slowly."]
NEW = ["Ada Quill works for Northwind.", "Marco Vell was born in Lisbon.", "Silent Harbor is a new novel."]


def tiny(seed=0, heads=4):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def ctx_for(model, docs=NEW, old=OLD, seen=()):
    return TrainContext(model=model, tokenizer=Tok(), device=torch.device("cpu"), train_docs=list(docs),
                        old_corpus=list(old), seen_docs=list(seen), batch_size=2, max_length=40,
                        generator=torch.Generator().manual_seed(0))


def batch(seed=0, B=2, T=10):
    ids = torch.randint(1, 64, (B, T), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def backward(model, b):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    out.loss.backward()


def train_steps(strategy, ctx, n=3, lr=1e-2):
    """A miniature of the loop: backward, before_step, AdamW step, after_step."""
    opt = torch.optim.AdamW([p for _, p in ctx.trainable()], lr=lr, weight_decay=0.01)
    for i in range(n):
        b = batch(i)
        opt.zero_grad(set_to_none=True)
        out = ctx.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
        loss = out.loss
        extra = strategy.extra_loss(ctx, b, out.logits)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        strategy.before_step(ctx)
        opt.step()
        strategy.after_step(ctx)


# --------------------------------------------------------------------------- SPG

def test_spg_scales_each_gradient_by_one_minus_importance():
    from metacl.strategies.spg import SPG, standardised_tanh_importance

    model = tiny()
    ctx = ctx_for(model)
    s = SPG(spg_docs=4, spg_mask="grad")
    s.before_task(ctx)                                  # importance of pre-training from old_corpus
    names = {n for n, _ in ctx.trainable()}
    assert set(s.importance) == names
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in s.importance.values())
    assert any(float(v.max()) > 0.5 for v in s.importance.values())

    backward(model, batch())
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    s.before_step(ctx)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, before[n] * (1 - s.importance[n]))

    # step mode (default, for Adam): the AdamW step itself shrinks by (1 - importance)
    free, masked = tiny(), tiny()
    step = SPG(spg_mask="step")
    step.importance = {n: v.clone() for n, v in s.importance.items()}
    w0 = {n: p.detach().clone() for n, p in free.named_parameters()}
    ctx_free, ctx_masked = ctx_for(free), ctx_for(masked)
    from metacl.strategies.base import Strategy
    train_steps(Strategy(), ctx_free, n=1)
    train_steps(step, ctx_masked, n=1)
    for (n, pf), (_, pm) in zip(free.named_parameters(), masked.named_parameters()):
        torch.testing.assert_close(pm - w0[n], (1 - step.importance[n]) * (pf - w0[n]), atol=1e-6, rtol=1e-4)

    # the estimator is |tanh(standardised g)| and accumulation is an elementwise max
    g = {"w": torch.tensor([1.0, 2.0, 3.0, 10.0])}
    imp = standardised_tanh_importance(g)["w"]
    z = (g["w"] - g["w"].mean()) / g["w"].std()
    torch.testing.assert_close(imp, torch.tanh(z).abs())
    s2 = SPG()
    s2.accumulate({"w": torch.tensor([0.1, 0.9])})
    s2.accumulate({"w": torch.tensor([0.5, 0.2])})
    torch.testing.assert_close(s2.importance["w"], torch.tensor([0.5, 0.9]))


# --------------------------------------------------------------------------- DAS

def test_das_virtual_mask_removes_a_whole_head_and_neuron():
    from metacl.strategies.das import fixed_unit_masks, unit_layers

    model = tiny().eval()
    b = batch()
    layers = unit_layers(model)
    hm = [torch.ones(4) for _ in layers]
    fm = [torch.ones(64) for _ in layers]
    hm[0][1] = 0.0
    fm[1][5] = 0.0
    with torch.no_grad(), fixed_unit_masks(model, hm, fm):
        masked = model(input_ids=b["input_ids"]).logits
    # the same as deleting head 1's o_proj columns and neuron 5's down_proj column
    d = layers[0].head_dim
    with torch.no_grad():
        layers[0].attn.o_proj.weight[:, d:2 * d] = 0
        layers[1].mlp.down_proj.weight[:, 5] = 0
        pruned = model(input_ids=b["input_ids"]).logits
    torch.testing.assert_close(masked, pruned)


def test_das_soft_masks_every_parameter_of_a_unit():
    from metacl.strategies.das import DAS, unit_layers

    model = tiny()
    ctx = ctx_for(model)
    s = DAS(das_docs=3, das_mask="grad")
    s.before_task(ctx)                                   # proxy-KL importance (two dropout passes)
    assert len(s.imp_head) == 2 and s.imp_head[0].shape == (4,) and s.imp_ffn[0].shape == (64,)
    assert all(float(h.min()) >= 0 and float(h.max()) <= 1 for h in s.imp_head + s.imp_ffn)

    layers = unit_layers(model)
    ih = [torch.full((4,), 0.25) for _ in layers]
    ifn = [torch.full((64,), 0.25) for _ in layers]
    ih[0][2] = 1.0                                       # head 2 of layer 0 fully protected
    ifn[1][7] = 1.0                                      # neuron 7 of layer 1 fully protected
    s.imp_head = None
    s.set_importance(layers, ih, ifn)
    backward(model, batch())
    g0 = {n: p.grad.clone() for n, p in model.named_parameters()}
    s.before_step(ctx)
    d = layers[0].head_dim
    a, m = layers[0].attn, layers[1].mlp
    for lin in (a.q_proj, a.k_proj, a.v_proj):
        assert torch.all(lin.weight.grad[2 * d:3 * d] == 0)
        torch.testing.assert_close(lin.weight.grad[:2 * d], 0.75 * g0[_name(model, lin.weight)][:2 * d])
    assert torch.all(a.o_proj.weight.grad[:, 2 * d:3 * d] == 0)
    torch.testing.assert_close(a.o_proj.weight.grad[:, :2 * d], 0.75 * g0[_name(model, a.o_proj.weight)][:, :2 * d])
    assert torch.all(m.gate_proj.weight.grad[7] == 0) and torch.all(m.up_proj.weight.grad[7] == 0)
    assert torch.all(m.down_proj.weight.grad[:, 7] == 0)
    torch.testing.assert_close(m.down_proj.weight.grad[:, 8], 0.75 * g0[_name(model, m.down_proj.weight)][:, 8])
    # parameters outside units (embeddings, norms) are untouched
    torch.testing.assert_close(model.model.embed_tokens.weight.grad, g0["model.embed_tokens.weight"])

    # step mode (default, for Adam): a fully protected unit does not move under AdamW at all
    step = DAS(das_mask="step")
    step.set_importance(layers, ih, ifn)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(step, ctx, n=2)
    assert torch.equal(a.q_proj.weight[2 * d:3 * d], w0[_name(model, a.q_proj.weight)][2 * d:3 * d])
    assert torch.equal(m.down_proj.weight[:, 7], w0[_name(model, m.down_proj.weight)][:, 7])
    assert not torch.equal(a.q_proj.weight[:2 * d], w0[_name(model, a.q_proj.weight)][:2 * d])


def _name(model, param):
    return next(n for n, p in model.named_parameters() if p is param)


# --------------------------------------------------------------------------- OSFT

def test_osft_update_has_no_component_in_frozen_subspace():
    from metacl.strategies.osft import OSFT, decoder_layers, layer_matrices

    model = tiny()
    ctx = ctx_for(model)
    s = OSFT(osft_docs=3)
    s.before_task(ctx)
    w0 = {p: p.detach().clone() for p in s.bases}
    train_steps(s, ctx, n=3)                             # real AdamW steps with weight decay
    checked = 0
    for p, (U, V) in s.bases.items():
        dW = p.detach() - w0[p]
        assert dW.abs().max() > 1e-6                     # it does learn, in the complement
        assert (U.T @ dW).abs().max() < 1e-5 * max(1.0, float(dW.abs().max()))
        assert (dW @ V).abs().max() < 1e-5 * max(1.0, float(dW.abs().max()))
        checked += 1
    assert checked == 2 * 7                              # q,k,v,o,gate,up,down in both layers
    assert len(decoder_layers(model)) == 2 and len(layer_matrices(decoder_layers(model)[0])) == 7


def test_osft_rank_rule_follows_layer_importance():
    from metacl.strategies.osft import OSFT, adaptive_rank, decoder_layers, layer_matrices, layer_parts

    assert adaptive_rank(0.0, 100, 0.1, 0.8) == 10 and adaptive_rank(1.0, 100, 0.1, 0.8) == 80
    assert [adaptive_rank(i / 4, 100, 0.1, 0.8) for i in range(5)] == sorted(adaptive_rank(i / 4, 100, 0.1, 0.8) for i in range(5))
    model = tiny()
    ctx = ctx_for(model)
    s = OSFT(osft_docs=3)
    s.before_task(ctx)
    assert len(s.importance) == 2 and all(0.0 <= i[p] <= 1.0 for i in s.importance for p in ("attn", "mlp"))
    for L, imp, ranks in zip(decoder_layers(model), s.importance, s.ranks):
        assert ranks == [round(min(lin.weight.shape) * (0.1 + imp[part] * 0.7)) for lin, part in layer_parts(L)]
    # a sublayer that adds nothing to the residual stream (output 0) has importance 0 and the lowest rank
    with torch.no_grad():
        decoder_layers(model)[1].self_attn.o_proj.weight.zero_()
        decoder_layers(model)[1].mlp.down_proj.weight.zero_()
    s.before_task(ctx)
    assert s.importance[1] == {"attn": 0.0, "mlp": 0.0}
    assert s.ranks[1] == [round(min(lin.weight.shape) * 0.1) for lin in layer_matrices(decoder_layers(model)[1])]
    f = OSFT(osft_rank_mode="fixed", osft_fixed_ratio=0.5)
    f.before_task(ctx)
    assert f.ranks[0] == [16] * 7


# --------------------------------------------------------------------------- O-LoRA

def test_olora_orthogonality_loss_zero_for_orthogonal_adapters():
    from metacl.strategies.olora import OLoRA, orthogonality_loss

    Q, _ = torch.linalg.qr(torch.randn(32, 8, generator=torch.Generator().manual_seed(0)))
    A_old, A_new = Q[:, :4].T, Q[:, 4:].T                # rows orthonormal, spans disjoint
    assert float(orthogonality_loss([A_old], A_new)) < 1e-5
    assert float(orthogonality_loss([A_old], A_old)) > 1.0

    model = tiny()
    ctx = ctx_for(model)
    s = OLoRA(olora_rank=4, olora_lambda=1.0)
    b = batch()
    ref = model(input_ids=b["input_ids"]).logits.detach()
    s.before_task(ctx)
    torch.testing.assert_close(model(input_ids=b["input_ids"]).logits, ref)   # B = 0: same function
    assert s.extra_loss(ctx, b, ref) is None                                   # nothing to be orthogonal to
    train_steps(s, ctx, n=2)
    s.before_task(ctx)                                                        # task 2: new adapter
    trainable = {n for n, _ in ctx.trainable()}
    assert trainable and all(n.endswith((".A.1", ".B.1")) for n in trainable)
    with torch.no_grad():
        for lin in s.layers:
            q, _ = torch.linalg.qr(torch.cat([lin.A[0], lin.A[1]]).T)
            lin.A[1].copy_(q[:, 4:8].T * lin.A[0].norm())       # make the new A orthogonal to the old
    assert float(s.extra_loss(ctx, b, ref).detach()) < 1e-4


# --------------------------------------------------------------------------- progressive

def test_progressive_leaves_earlier_columns_bit_identical():
    from metacl.strategies.progressive import Progressive, ProgressiveLM

    model = tiny()
    ctx = ctx_for(model)
    s = Progressive(progressive_width=8)
    b = batch()
    ref = model(input_ids=b["input_ids"]).logits.detach()
    s.before_task(ctx)
    assert isinstance(ctx.model, ProgressiveLM) and ctx.model.base is model        # the LM is column 0
    torch.testing.assert_close(ctx.model(input_ids=b["input_ids"]).logits, ref)   # new column starts silent
    train_steps(s, ctx, n=3)
    frozen = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}   # LM + column 1
    s.before_task(ctx)
    cols = ctx.model.columns
    assert len(cols) == 2 and all(len(lats) == 2 for lats in cols[1].laterals)    # laterals from LM and column 1
    train_steps(s, ctx, n=3)
    for n, p in ctx.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n                                   # bit-identical
    assert not torch.equal(cols[1].out.weight, torch.zeros_like(cols[1].out.weight))
    assert cols[0].out.weight.abs().sum() > 0                                   # column 1 did learn in task 1


# --------------------------------------------------------------------------- TaSL

def test_tasl_keeps_specific_units_and_merges_shared_ones():
    from metacl.strategies.tasl import TaSL, consolidate, skill_units

    model = tiny()
    units = skill_units(model)
    assert set(units) == {"layer0.attn", "layer0.mlp", "layer1.attn", "layer1.mlp", "rest"}
    old = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)                                  # the "new" model: every weight + 1
    s_old = {"layer0.attn": 1.0, "layer0.mlp": 0.1, "layer1.attn": 0.6, "layer1.mlp": 0.1, "rest": 0.1}
    s_new = {"layer0.attn": 0.1, "layer0.mlp": 1.0, "layer1.attn": 0.2, "layer1.mlp": 0.1, "rest": 0.1}
    dec = consolidate(model, old, units, s_old, s_new, frac=0.2)          # top 1 unit per side
    assert dec == {"layer0.attn": "old", "layer0.mlp": "new", "layer1.attn": "merged", "layer1.mlp": "merged", "rest": "merged"}
    p = dict(model.named_parameters())
    for n in units["layer0.attn"]:
        assert torch.equal(p[n], old[n])
    for n in units["layer0.mlp"]:
        torch.testing.assert_close(p[n], old[n] + 1.0)
    for n in units["layer1.attn"]:
        torch.testing.assert_close(p[n], old[n] + 0.2 / 0.8)              # (0.6*old + 0.2*(old+1)) / 0.8
    for n in units["rest"]:
        torch.testing.assert_close(p[n], old[n] + 0.5)

    # the hooks run end to end: old importance at task start, consolidation at task end
    model = tiny(1)
    ctx = ctx_for(model)
    s = TaSL(tasl_top=0.2, tasl_docs=3)
    s.before_task(ctx)
    assert max(s.s_old.values()) == 1.0
    train_steps(s, ctx, n=2)
    s.after_task(ctx)
    assert set(s.last_decision.values()) <= {"old", "new", "merged"} and len(s.last_decision) == 5
