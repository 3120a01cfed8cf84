"""Defining mechanisms of RHO-1 (token selection), K-Adapter (frozen base) and ICL (no update)."""

from __future__ import annotations

import copy
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_strategies_common import NEW, loop_loss, make_ctx, random_batch, tiny_model  # noqa: E402

from metacl.engine.losses import label_mask, token_nll  # noqa: E402
from metacl.strategies.icl import ICL  # noqa: E402
from metacl.strategies.k_adapter import KAdapter, ParallelAdapter  # noqa: E402
from metacl.strategies.rho1 import Rho1, select_top_excess  # noqa: E402


# ----------------------------------------------------------------------------------- RHO-1

def test_rho1_trains_only_on_selected_tokens():
    ctx = make_ctx()
    rho = Rho1(rho1_ratio=0.3)
    rho.before_task(ctx)
    with torch.no_grad():  # make the model differ from its reference so excess losses differ
        for p in ctx.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = random_batch(B=3, T=16)
    nll = token_nll(ctx.model, batch)
    w = rho.token_weights(ctx, batch, nll)
    mask = label_mask(batch)
    n_valid = int(mask.sum())
    assert set(w.unique().tolist()) <= {0.0, 1.0}
    assert int(w.sum()) == math.ceil(0.3 * n_valid)
    assert float((w * (1 - mask)).sum()) == 0.0                   # never a padding/first position
    excess = (nll - token_nll(ctx.reference_model(), batch)).detach()
    sel, rest = excess[w > 0], excess[(w == 0) & (mask > 0)]
    assert sel.min() >= rest.max()                                 # the top-excess tokens

    # the loop's loss gradient equals the gradient of the mean NLL over the selected tokens only
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    loss, _ = loop_loss(ctx, [rho], batch)
    g = torch.autograd.grad(loss, params)
    sel_loss = (token_nll(ctx.model, batch) * w).sum() / w.sum()
    g_sel = torch.autograd.grad(sel_loss, params)
    for a, b in zip(g, g_sel):
        torch.testing.assert_close(a, b)
    # and an unselected token contributes nothing: its gradient alone is not in the update
    other = ((w == 0) & (mask > 0)).float()
    g_other = torch.autograd.grad((token_nll(ctx.model, batch) * other).sum(), params)
    assert any(x.abs().sum() > 0 for x in g_other)


def test_select_top_excess_handles_ties_and_empty():
    m = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    assert select_top_excess(torch.zeros(1, 4), torch.zeros(1, 4), 0.5).sum() == 0
    w = select_top_excess(torch.tensor([[9.0, 1.0, 2.0, 9.0]]), m, 0.5)
    assert w.tolist() == [[0.0, 0.0, 1.0, 0.0]]


# ------------------------------------------------------------------------------- K-Adapter

def test_k_adapter_leaves_base_weights_unchanged_and_learns_in_adapters():
    ctx = make_ctx()
    base_before = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    batch = random_batch()
    with torch.no_grad():
        out0 = ctx.model(**batch).logits
    KAdapter(k_adapter_rank=4).before_task(ctx)
    adapters = [m for m in ctx.model.modules() if isinstance(m, ParallelAdapter)]
    assert len(adapters) == 2
    with torch.no_grad():  # zero-initialised: the wrapped model computes what the base did
        torch.testing.assert_close(ctx.model(**batch).logits, out0)
    trainable = [p for _, p in ctx.trainable()]
    assert trainable and all(".down." in n or ".up." in n for n, _ in ctx.trainable())
    opt = torch.optim.AdamW(trainable, lr=1e-2)  # the loop builds it after before_task
    for _ in range(3):
        opt.zero_grad()
        loss, _ = loop_loss(ctx, [], batch)
        loss.backward()
        opt.step()
    after = dict(ctx.model.named_parameters())
    for n, p in base_before.items():
        wrapped = n.replace(".mlp.", ".mlp.mlp.")
        torch.testing.assert_close(after[wrapped].detach(), p, rtol=0, atol=0)  # bit-for-bit
    with torch.no_grad():
        assert not torch.allclose(ctx.model(**batch).logits, out0)  # the knowledge went somewhere
    KAdapter(k_adapter_rank=4).before_task(ctx)  # a second task does not wrap twice
    assert sum(isinstance(m, ParallelAdapter) for m in ctx.model.modules()) == 2


# ------------------------------------------------------------------------------------- ICL

ITEMS_TL = [{"uuid": f"tl{i}", "evidence": d, "invariant": False, "task_descriptive": "x", "object": "x"}
            for i, d in enumerate(NEW)]
ITEM_NF = {"uuid": "nf0", "evidence": "Paris is the capital of France.", "invariant": True,
           "task_descriptive": "Paris is the capital of France .", "object": "France"}


def test_icl_prompts_tl_with_own_evidence_and_nf_with_a_tl_document():
    ctx = make_ctx()
    icl = ICL()
    assert ICL.trains is False
    for it in ITEMS_TL:
        assert icl.probe_prefix(ctx, it) == it["evidence"]
    nf = icl.probe_prefix(ctx, ITEM_NF)
    assert nf in ctx.train_docs and nf != ITEM_NF["evidence"]
    assert icl.probe_prefix(ctx, dict(ITEM_NF)) == nf  # deterministic
    # an NF item whose evidence were a training document still never gets its own evidence
    tricky = dict(ITEM_NF, evidence=NEW[0])
    assert icl.probe_prefix(ctx, tricky) != NEW[0]


def test_icl_never_changes_a_weight():
    ctx = make_ctx()
    before = copy.deepcopy(ctx.model.state_dict())
    icl = ICL()
    batch = random_batch()
    icl.before_task(ctx)
    b = icl.train_batch(ctx, batch)
    assert icl.token_weights(ctx, b, torch.zeros(3, 12)) is None and icl.extra_loss(ctx, b, None) is None
    icl.before_step(ctx), icl.after_step(ctx), icl.after_epoch(ctx), icl.after_task(ctx)
    for it in ITEMS_TL + [ITEM_NF]:
        icl.probe_prefix(ctx, it)
    after = ctx.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
