"""Defining mechanisms of the regularisation baselines: EWC, LwF, RecAdam, NCL, A-GEM."""

from __future__ import annotations

import copy
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_strategies_common import NEW, OLD, loop_loss, make_ctx, random_batch, tiny_model  # noqa: E402

from metacl.errors import MetaclError  # noqa: E402
from metacl.strategies import get_strategy  # noqa: E402
from metacl.strategies.agem import AGEM, project_agem  # noqa: E402
from metacl.strategies.ewc import EWC  # noqa: E402
from metacl.strategies.lwf import LwF, next_token_kl  # noqa: E402
from metacl.strategies.ncl import NCL, trust_region_step  # noqa: E402
from metacl.strategies.recadam import RecAdam, anneal_lambda  # noqa: E402


# ------------------------------------------------------------------------------------ EWC

def test_ewc_penalty_zero_at_anchor_and_grows_with_fisher_weighted_distance():
    ctx = make_ctx()
    ewc = EWC(ewc_lambda=10.0, ewc_fisher_docs=4)
    ewc.before_task(ctx)  # first task: Fisher from the pre-training corpus
    assert not ewc.prior.empty
    batch = random_batch()
    assert float(ewc.extra_loss(ctx, batch, None).detach()) == 0.0  # at the anchor

    # move one high-Fisher and one low-Fisher coordinate by the same amount
    name = "model.layers.0.mlp.down_proj.weight"
    p = dict(ctx.model.named_parameters())[name]
    F = ewc.prior.fisher[name].flatten()
    hi, lo = int(F.argmax()), int(F.argmin())
    assert F[hi] > F[lo]
    penalties = {}
    for which, idx in (("hi", hi), ("lo", lo)):
        for delta in (0.1, 0.2):
            with torch.no_grad():
                p.view(-1)[idx] += delta
            penalties[which, delta] = float(ewc.extra_loss(ctx, batch, None).detach())
            expected = 10.0 / 2 * float(F[idx]) * delta**2
            assert penalties[which, delta] == pytest.approx(expected, rel=1e-4, abs=1e-12)
            with torch.no_grad():
                p.view(-1)[idx] -= delta
    assert penalties["hi", 0.2] > penalties["hi", 0.1] > 0           # grows with distance
    assert penalties["hi", 0.1] > penalties["lo", 0.1]               # weighted by Fisher


def test_ewc_online_fisher_accumulates_after_task():
    ctx = make_ctx()
    ewc = EWC(ewc_lambda=1.0, ewc_gamma=0.5, ewc_fisher_docs=3)
    ewc.before_task(ctx)
    f0 = {n: f.clone() for n, f in ewc.prior.fisher.items()}
    ewc.after_task(ctx)
    from metacl.strategies.importance import fisher_on_docs

    # F = gamma F_old + F_new, with F_new on the task's documents (same sample order)
    ctx2 = make_ctx(model=ctx.model)
    fisher_on_docs(ctx2, OLD, 3)  # advance the generator exactly as before_task did
    f_new = fisher_on_docs(ctx2, NEW, 3)
    name = "model.layers.1.mlp.up_proj.weight"
    torch.testing.assert_close(ewc.prior.fisher[name], 0.5 * f0[name] + f_new[name])


def test_ewc_without_old_data_has_no_penalty_on_first_task():
    ctx = make_ctx(old_corpus=[])
    ewc = EWC()
    ewc.before_task(ctx)
    assert ewc.extra_loss(ctx, random_batch(), None) is None


def test_bad_option_is_one_line_metacl_error():
    with pytest.raises(MetaclError, match="--ewc-lambda"):
        EWC(ewc_lambda=-1.0)


# ------------------------------------------------------------------------------------ LwF

def test_lwf_loss_zero_when_models_agree_and_positive_when_they_differ():
    ctx = make_ctx()
    lwf = LwF(lwf_alpha=1.0, lwf_temperature=2.0)
    lwf.before_task(ctx)
    batch = random_batch()
    logits = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert float(lwf.extra_loss(ctx, batch, logits).detach()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        ctx.model.lm_head.weight.add_(0.5 * torch.randn_like(ctx.model.lm_head.weight))
    logits = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = lwf.extra_loss(ctx, batch, logits)
    assert float(loss) > 1e-3
    loss.backward()
    assert ctx.model.lm_head.weight.grad.abs().sum() > 0


def test_lwf_complement_distils_only_where_the_token_weights_are_low():
    """--lwf-tokens complement: a position the weighter learns (w = 1) is not distilled, one it skips (w = 0) is."""
    ctx = make_ctx()
    lwf = LwF(lwf_tokens="complement")
    lwf.before_task(ctx)
    batch = random_batch(pad_last=0)
    with torch.no_grad():
        base = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    w = torch.zeros(batch["labels"].shape)
    w[:, 5] = 1.0          # the target at column 5 (predicted from position 4) is the one to learn
    ctx.token_weights = w
    moved = base.clone()
    moved[:, 4] += 3.0 * torch.randn(moved.shape[-1])
    assert float(lwf.extra_loss(ctx, batch, moved)) == pytest.approx(0.0, abs=1e-6)
    assert float(LwF(lwf_tokens="all").extra_loss(ctx, batch, moved)) > 1e-3   # the default distils it
    moved = base.clone()
    moved[:, 6] += 3.0 * torch.randn(moved.shape[-1])   # predicts column 7, weight 0: distilled
    assert float(lwf.extra_loss(ctx, batch, moved)) > 1e-3
    ctx.token_weights = 0.25 * torch.ones(batch["labels"].shape)   # partial weights: the KL is a weighted mean
    torch.testing.assert_close(lwf.extra_loss(ctx, batch, moved), next_token_kl(base, moved, 0.75 * torch.ones(w.shape), 2.0))


def test_lwf_complement_refuses_a_composition_without_a_weighter():
    from metacl.ckl.stream import build_strategies

    with pytest.raises(MetaclError, match="token-weighting strategy"):
        build_strategies(["lwf"], {"lwf_tokens": "complement"})
    with pytest.raises(MetaclError, match="token-weighting strategy"):
        build_strategies(["ewc", "lwf"], {"lwf_tokens": "complement"})
    assert [s.name for s in build_strategies(["salient_span", "lwf"], {"lwf_tokens": "complement"})] == ["salient_span", "lwf"]
    with pytest.raises(MetaclError, match="--lwf-tokens"):
        LwF(lwf_tokens="weighted")


def test_the_loop_hands_extra_losses_the_combined_token_weights():
    from metacl.ckl.train import combined_weights, loss_terms

    ctx = make_ctx()
    strategies = [get_strategy("salient_span")(), LwF(lwf_tokens="complement")]
    for s in strategies:
        s.before_task(ctx)
    batch = random_batch()
    loss_terms(strategies, ctx, batch)
    nll = torch.zeros(batch["labels"].shape)
    torch.testing.assert_close(ctx.token_weights, combined_weights(strategies, ctx, batch, nll))
    assert 0 < float(ctx.token_weights.sum()) < float((batch["labels"] != -100).sum())


def test_next_token_kl_ignores_masked_positions():
    old = torch.randn(1, 5, 7)
    new = old.clone()
    new[0, 3] += 5.0 * torch.randn(7)  # differs only at the position predicting token 4
    mask = torch.ones(1, 5)
    mask[0, 4] = 0
    assert float(next_token_kl(old, new, mask, 1.0)) == pytest.approx(0.0, abs=1e-6)
    mask[0, 4] = 1
    assert float(next_token_kl(old, new, mask, 1.0)) > 0


def test_distill_kl_is_the_batchmean_kl_times_t_squared_and_next_token_kl_its_shifted_form():
    """The one distillation KL: Split-Digits' (B, C) form and the LM's next-token form share it."""
    import torch.nn.functional as F

    from metacl.engine.losses import distill_kl

    g = torch.Generator().manual_seed(0)
    old, new, T = 3 * torch.randn(8, 10, generator=g), 3 * torch.randn(8, 10, generator=g), 2.0
    ref = T * T * F.kl_div(F.log_softmax(new / T, -1), F.log_softmax(old / T, -1), log_target=True, reduction="batchmean")
    assert float(distill_kl(old, new, T)) == pytest.approx(float(ref), rel=1e-5)
    assert float(distill_kl(old, old, T)) == pytest.approx(0.0, abs=1e-6)
    old3, new3 = torch.randn(2, 6, 7, generator=g), torch.randn(2, 6, 7, generator=g)
    mask = torch.ones(2, 6)
    mask[1, 3:] = 0
    shifted = distill_kl(old3[:, :-1], new3[:, :-1], T, mask[:, 1:])
    assert torch.equal(next_token_kl(old3, new3, mask, T), shifted)
    kept = mask[:, 1:].bool()
    manual = T * T * F.kl_div(F.log_softmax(new3[:, :-1][kept] / T, -1), F.log_softmax(old3[:, :-1][kept] / T, -1),
                              log_target=True, reduction="batchmean")
    assert float(shifted) == pytest.approx(float(manual), rel=1e-5)


# -------------------------------------------------------------------------------- RecAdam

def test_recadam_annealing_schedule():
    k, t0 = 0.1, 50
    lams = [anneal_lambda(t, k, t0) for t in range(0, 201, 10)]
    assert all(b > a for a, b in zip(lams, lams[1:]))         # monotone increasing
    assert anneal_lambda(t0, k, t0) == pytest.approx(0.5)
    assert anneal_lambda(0, k, t0) == pytest.approx(1 / (1 + math.exp(5)))
    assert anneal_lambda(10_000, k, t0) == pytest.approx(1.0)
    assert anneal_lambda(-1e6, k, t0) == 0.0                   # no overflow


def test_recadam_leaves_the_task_gradient_to_the_optimizer():
    """The pull is decoupled (tests/test_strategies_faithful.py checks the step): before_step must not
    fold (1 - lambda) gamma (theta - theta0) into the gradient, which Adam would renormalise away."""
    ctx = make_ctx(total_steps=100)
    rec = RecAdam(recadam_gamma=3.0, recadam_k=0.2, recadam_t0=0.1)  # t0 = 10 steps
    rec.before_task(ctx)
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    rec.t = 7
    batch = random_batch()
    lam = anneal_lambda(7, 0.2, 10)
    ctx.model.zero_grad()
    loss, _ = loop_loss(ctx, [rec], batch)
    loss.backward()
    expected = [p.grad.clone() for _, p in ctx.trainable()]
    rec.before_step(ctx)
    for (n, p), e in zip(ctx.trainable(), expected):
        torch.testing.assert_close(p.grad, e, rtol=0, atol=0)
    assert ctx.scratch["recadam"]["lambda"] == pytest.approx(lam)


# ------------------------------------------------------------------------------------ NCL

def test_ncl_step_respects_trust_region():
    torch.manual_seed(0)
    prec = {"a": torch.rand(50) * 100 + 0.1, "b": torch.rand(20) + 0.1}
    big = {"a": torch.randn(50) * 100, "b": torch.randn(20) * 100}
    small = {"a": torch.randn(50) * 1e-4, "b": torch.randn(20) * 1e-4}
    rho, lr = 0.05, 1e-2
    for grads, on_boundary in ((big, True), (small, False)):
        delta, step, s = trust_region_step(grads, prec, lr, rho)
        q = sum(float((delta[n] ** 2 * prec[n]).sum()) for n in delta)  # dtheta^T Lambda dtheta
        assert q <= rho**2 * (1 + 1e-6)
        if on_boundary:
            assert q == pytest.approx(rho**2, rel=1e-5) and step < lr
        else:
            assert step == lr
        # preconditioned by the inverse precision: delta_i = -step * g_i / Lambda_i
        torch.testing.assert_close(delta["a"], -step * grads["a"] / prec["a"])


def test_ncl_hook_moves_high_precision_coordinates_less_and_replaces_optimizer_step():
    ctx = make_ctx()
    ncl = NCL(ncl_lambda=1e4, ncl_prior_precision=1.0, ncl_lr=1e-2, ncl_trust_radius=0.02, ncl_fisher_docs=4)
    ncl.before_task(ctx)
    before = {n: p.detach().clone() for n, p in ctx.trainable()}
    prec = ncl.precision(ctx.trainable())
    loss, _ = loop_loss(ctx, [ncl], random_batch())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in ctx.trainable()}
    ncl.before_step(ctx)
    assert all(p.grad is None for _, p in ctx.trainable())  # the loop's optimizer will skip them
    q = sum(float(((p.detach() - before[n]) ** 2 * prec[n]).sum()) for n, p in ctx.trainable())
    assert 0 < q <= 0.02**2 * (1 + 1e-5)
    step = ctx.scratch["ncl"]["step_size"]
    for n, p in ctx.trainable():
        torch.testing.assert_close(p.detach() - before[n], -step * grads[n] / prec[n], rtol=1e-3, atol=2e-7)  # float32 ulp of weights ~1


# ----------------------------------------------------------------------------------- A-GEM

def test_agem_projection_has_nonnegative_dot_with_reference():
    g_gen = torch.Generator().manual_seed(0)
    conflicts = 0
    for _ in range(50):
        g = {"x": torch.randn(10, generator=g_gen), "y": torch.randn(3, generator=g_gen)}
        ref = {"x": torch.randn(10, generator=g_gen), "y": torch.randn(3, generator=g_gen)}
        new, projected = project_agem(g, ref)
        dot = sum(float((new[k] * ref[k]).sum()) for k in g)
        assert dot >= -1e-5
        before = sum(float((g[k] * ref[k]).sum()) for k in g)
        if before < 0:
            conflicts += 1
            assert projected and dot == pytest.approx(0.0, abs=1e-5)
        else:
            assert not projected and all(torch.equal(new[k], g[k]) for k in g)
    assert conflicts > 5  # both branches were exercised


def test_agem_hook_projects_model_gradient_against_memory():
    ctx = make_ctx(old_corpus=[OLD[0]])  # a one-document memory makes g_ref reproducible
    agem = AGEM(agem_mem_batch=1)
    agem.before_task(ctx)
    g_ref = agem.reference_gradient(ctx)
    # craft a gradient that conflicts with the memory: g = -g_ref + noise
    for n, p in ctx.trainable():
        p.grad = -g_ref[n] + 0.01 * torch.randn_like(p)
    agem.before_step(ctx)
    dot = sum(float((p.grad * g_ref[n]).sum()) for n, p in ctx.trainable())
    assert ctx.scratch["agem"]["projected"] and dot >= -1e-4


def test_registry_and_cli_options():
    import argparse

    for name in ("ewc", "lwf", "recadam", "ncl", "agem", "replay", "mix_review", "rho1", "k_adapter", "icl"):
        cls = get_strategy(name)
        assert cls.description
        parser = argparse.ArgumentParser()
        cls.add_args(parser)
        args = parser.parse_args([])
        inst = cls.from_args(args)  # defaults construct a working strategy
        assert inst.name == name
        for action in parser._actions[1:]:
            assert action.option_strings[0].startswith("--" + name.replace("_", "-"))
