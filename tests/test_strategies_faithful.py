"""Mechanism tests for the strategies made faithful to their papers (issue 16).

Each test checks the defining mechanism of the paper and fails on the simplification it
replaced (named in the test's docstring): RecAdam's coupled gradient, K-Adapter's in-layer
parallel adapters, progressive "columns" that were per-layer adapters, RHO-1 with only the
task-start reference, DAS importance from the signed batch-mean gradient, OSFT importance from
the residual-included block cosine on current-task text. Plus the CLI card of every strategy.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_strategies_common import NEW, OLD, CharTokenizer, loop_loss, make_ctx, random_batch, tiny_model  # noqa: E402

from metacl.errors import MetaclError  # noqa: E402
from metacl.core.batching import doc_batches, tokenize_docs  # noqa: E402
from metacl.engine.losses import label_mask, token_nll  # noqa: E402
from metacl.strategies.importance import mean_nll  # noqa: E402
from metacl.strategies.base import TrainContext  # noqa: E402

DOCS = ["Ada Quill works for Northwind Labs in the city of Port Avery.",
        "Marco Vell was born in Lisbon and plays the violin.",
        "The novel Silent Harbor was written by Ada Quill in 1998.",
        "Paris is the capital of France. Rome is the capital of Italy."]
OLD_TEXT = ["Tokens with a leading space differ from tokens without one.",
            "Rome is the capital of Italy.", "Marco Vell plays the violin."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from metacl.models.pretrain import tiny_model_for_tests

    return tiny_model_for_tests(tmp_path_factory.mktemp("tiny_lm"), texts=DOCS + OLD_TEXT, seed=0)


def lm_ctx(model, tok, docs=DOCS):
    return TrainContext(model=model, tokenizer=tok, device=torch.device("cpu"), train_docs=list(docs),
                        old_corpus=list(OLD_TEXT), batch_size=2, max_length=32,
                        generator=torch.Generator().manual_seed(0))


def train(ctx, strategies, epochs=3, lr=1e-2):
    from metacl.ckl.train import train_task

    return train_task(ctx, strategies, epochs, lambda ps: torch.optim.AdamW(ps, lr=lr), progress=False)


def answers(model, batch):
    """Teacher-forced argmax at every position (what the probes score), as a (B, T) tensor."""
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)


# ------------------------------------------------------------------------------ RecAdam

def test_recadam_step_is_the_decoupled_formula():
    """theta' = theta + lambda * step_Adam(grad L); theta = theta' - lr (1-lambda) gamma (theta' - theta_0).

    Fails on the coupled form (grad <- lambda grad + (1-lambda) gamma (theta - theta_0), then Adam),
    whose step Adam renormalises and the loop's clipping cuts."""
    from metacl.strategies.recadam import RecAdam, anneal_lambda

    gamma, lr, k, t0 = 3.0, 1e-2, 0.2, 10.0
    ctx = make_ctx(total_steps=100)
    rec = RecAdam(recadam_gamma=gamma, recadam_k=k, recadam_t0=t0)
    rec.before_task(ctx)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    twin = copy.deepcopy(ctx.model)          # plain AdamW on the same task gradients gives step_Adam
    params = [p for _, p in ctx.trainable()]
    tparams = list(twin.parameters())
    ctx.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    topt = torch.optim.AdamW(tparams, lr=lr, weight_decay=0.0)
    rec.t = 7
    for step in range(3):
        lam = anneal_lambda(rec.t, k, t0)
        assert 0.2 < lam < 0.8
        ctx.optimizer.zero_grad(set_to_none=True)
        loss, _ = loop_loss(ctx, [rec], random_batch(seed=step))
        loss.backward()
        for tp, p in zip(tparams, params):
            tp.grad = p.grad.clone()
        before = [p.detach().clone() for p in params]
        rec.before_step(ctx)
        ctx.optimizer.step()
        rec.after_step(ctx)
        tbefore = [tp.detach().clone() for tp in tparams]
        topt.step()
        for (n, p), b, tb, tp in zip(ctx.trainable(), before, tbefore, tparams):
            expected = b + lam * (tp.detach() - tb)
            expected = expected - lr * (1 - lam) * gamma * (expected - rec.theta0[n])
            torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)
    assert rec.t == 10


def test_recadam_pull_that_would_overshoot_lands_on_theta0():
    from metacl.strategies.recadam import RecAdam

    ctx = make_ctx(total_steps=100)
    rec = RecAdam(recadam_gamma=1e6, recadam_k=1.0, recadam_t0=1000)  # lambda ~ 0, lr * gamma = 1e4
    rec.before_task(ctx)
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(0.1)
    ctx.optimizer = torch.optim.AdamW([p for _, p in ctx.trainable()], lr=1e-2)
    loss, _ = loop_loss(ctx, [rec], random_batch())
    loss.backward()
    rec.before_step(ctx)
    ctx.optimizer.step()
    rec.after_step(ctx)
    for n, p in ctx.trainable():
        torch.testing.assert_close(p.detach(), rec.theta0[n], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- K-Adapter

def test_k_adapter_learns_outside_the_frozen_lm_from_its_intermediate_hidden_states(model_dir):
    """The answers change, the LM stays bit-identical and unmodified (no module of it replaced), and
    each adapter layer reads the output hidden state of an intermediate LM layer.

    Fails on the stand-in (a zero-init bottleneck inside every MLP, which rewrote the LM's modules)."""
    from metacl.models.loading import load_model_and_tokenizer
    from metacl.strategies.k_adapter import AdapterLayer, KAdapter, KAdapterLM, tap_layers

    assert tap_layers(24, 3) == [0, 11, 23]                       # the paper's RoBERTa-large layers
    model, tok = load_model_and_tokenizer(model_dir, device="cpu")
    probe = tokenize_docs(tok, DOCS, 32)
    base_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    modules_before = [(n, type(m)) for n, m in model.named_modules()]
    before = answers(model, probe)
    with torch.no_grad():
        base_logits = model(**{k: probe[k] for k in ("input_ids", "attention_mask")}).logits.clone()
    ctx = lm_ctx(model, tok)
    train(ctx, [KAdapter(k_adapter_rank=16, k_adapter_depth=1, k_adapter_taps=2)])
    wrapped = ctx.model
    assert isinstance(wrapped, KAdapterLM) and wrapped.base is model
    assert [(n, type(m)) for n, m in model.named_modules()] == modules_before    # nothing inserted into the LM
    for n, p in model.named_parameters():
        assert torch.equal(p, base_params[n]), n                                 # bit-identical
    with torch.no_grad():
        assert torch.equal(model(**{k: probe[k] for k in ("input_ids", "attention_mask")}).logits, base_logits)
    m = label_mask(probe) > 0
    assert (answers(wrapped, probe) != before)[m].any()                         # the knowledge went somewhere

    hs = model.model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"],
                     output_hidden_states=True).hidden_states
    seen = []
    hooks = [a.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
             for a in wrapped.modules() if isinstance(a, AdapterLayer)]
    answers(wrapped, probe)
    for h in hooks:
        h.remove()
    assert wrapped.taps == [0, 1] and len(seen) == 2
    for tap, x in zip(wrapped.taps, seen):
        torch.testing.assert_close(x, hs[tap + 1])                              # output of LM layer `tap`
    assert not torch.allclose(seen[0], hs[-1])                                  # an intermediate one, not the last


# -------------------------------------------------------------------------- progressive

def test_progressive_adds_a_column_with_laterals_per_task_and_keeps_old_columns(model_dir):
    """Task k adds column k, whose every layer reads layer l-1 of the LM and of every earlier column;
    the LM and old columns stay bit-identical; the answers change.

    Fails on the stand-in (per-layer adapters feeding back into the LM's own residual stream)."""
    from metacl.models.loading import load_model_and_tokenizer
    from metacl.strategies.progressive import Progressive, ProgressiveLM

    model, tok = load_model_and_tokenizer(model_dir, device="cpu")
    probe = tokenize_docs(tok, DOCS, 32)
    m = label_mask(probe) > 0
    base_answers = answers(model, probe)
    s = Progressive(progressive_width=16)
    ctx = lm_ctx(model, tok, DOCS[:2])
    train(ctx, [s])
    net = ctx.model
    assert isinstance(net, ProgressiveLM) and net.base is model and len(net.columns) == 1
    assert (answers(net, probe) != base_answers)[m].any()
    frozen = {n: p.detach().clone() for n, p in net.named_parameters()}      # LM + column 1
    after_task1 = answers(net, probe)

    ctx.train_docs, ctx.seen_docs = list(DOCS[2:]), list(DOCS[:2])
    train(ctx, [s])
    assert len(net.columns) == 2
    new = net.columns[1]
    n_layers = model.config.num_hidden_layers
    assert len(new.laterals) == n_layers and all(len(lats) == 2 for lats in new.laterals)
    assert new.laterals[0][0].in_features == model.config.hidden_size and new.laterals[0][1].in_features == 16
    for n, p in net.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n                                # LM and column 1 bit-identical
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("columns.1.") for n in trainable)
    # the laterals from column 1 are live: cutting them changes what the newest column predicts
    cut = copy.deepcopy(net)
    with torch.no_grad():
        for lats in cut.columns[1].laterals:
            lats[1].weight.zero_()
        full = net(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
        assert not torch.allclose(cut(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits, full)
    assert (answers(net, probe) != after_task1)[m].any() or (answers(net, probe) != base_answers)[m].any()


# -------------------------------------------------------------------------------- RHO-1

def test_rho1_task_start_reference_has_zero_excess_at_the_first_step():
    """TAALM's variant, kept under its own name: model = reference at step 1, so the excess is exactly 0."""
    from metacl.strategies.rho1 import Rho1

    ctx = make_ctx()
    rho = Rho1(rho1_ratio=0.5)
    rho.before_task(ctx)
    batch = random_batch()
    with torch.no_grad():
        excess = token_nll(ctx.model, batch) - token_nll(ctx.reference_model(), batch)
    assert float(excess.abs().max()) == 0.0


def test_rho1_ref_selects_by_excess_over_a_separately_trained_reference(tmp_path):
    """rho1_ref subtracts the per-token loss of an LM loaded from --rho1-ref-model, so its first
    selection is already informative. Fails where only the task-start reference exists."""
    from metacl.models.loading import load_model_and_tokenizer
    from metacl.models.pretrain import tiny_model_for_tests
    from metacl.strategies import get_strategy
    from metacl.strategies.rho1 import Rho1, select_top_excess

    main = tiny_model_for_tests(tmp_path / "main", texts=DOCS, seed=0)
    ref = tiny_model_for_tests(tmp_path / "ref", texts=DOCS, seed=1)
    cls = get_strategy("rho1_ref")
    s = cls(rho1_ref_model=str(ref), rho1_ref_ratio=0.3)
    s.preflight(str(main))                                           # same tokenizer: accepted
    model, tok = load_model_and_tokenizer(main, device="cpu")
    ctx = lm_ctx(model, tok)
    s.before_task(ctx)
    batch = tokenize_docs(tok, DOCS, 32)
    with torch.no_grad():
        nll = token_nll(model, batch)
        w = s.token_weights(ctx, batch, nll)
        ref_model, _ = load_model_and_tokenizer(ref, device="cpu")
        excess = nll - token_nll(ref_model, batch)
    mask = label_mask(batch)
    assert float(excess[mask > 0].abs().min()) > 0                # informative from the first step
    assert torch.equal(w, select_top_excess(excess, mask, 0.3))
    assert int(w.sum()) == math.ceil(0.3 * int(mask.sum()))
    r = Rho1(rho1_ratio=0.3)
    r.before_task(ctx)
    assert not torch.equal(r.token_weights(ctx, batch, nll), w)   # the two references select differently

    with pytest.raises(MetaclError, match="--rho1-ref-model"):
        cls()
    with pytest.raises(MetaclError, match="does not exist"):
        cls(rho1_ref_model=str(tmp_path / "missing")).preflight(str(main))
    other = tiny_model_for_tests(tmp_path / "other", texts=["zzz qqq xxx"] * 3, seed=0, vocab_size=300)
    with pytest.raises(MetaclError, match="tokenizer differs"):
        cls(rho1_ref_model=str(other)).preflight(str(main))


# ---------------------------------------------------------------------------------- DAS

def test_das_importance_is_mean_over_samples_of_abs_virtual_mask_gradient():
    """I_u = (1/N) sum_n |dL(x_n)/dm_u|, then |tanh(standardise)| per layer. Fails on the signed
    batch-mean gradient, where per-document gradients of opposite sign cancel."""
    from metacl.strategies.das import _standardised_tanh, fixed_unit_masks, unit_importance, unit_layers

    model = tiny_model()
    layers = unit_layers(model)
    batches = doc_batches(CharTokenizer(), NEW + OLD, 3, 48, "cpu")
    acc_h = [torch.zeros(L.n_heads) for L in layers]
    acc_f = [torch.zeros(L.n_neurons) for L in layers]
    signed_f = [torch.zeros(L.n_neurons) for L in layers]
    n = 0
    for b in batches:
        for i in range(b["input_ids"].shape[0]):
            row = {k: v[i : i + 1] for k, v in b.items()}
            hm = [torch.ones(L.n_heads, requires_grad=True) for L in layers]
            fm = [torch.ones(L.n_neurons, requires_grad=True) for L in layers]
            with fixed_unit_masks(model, hm, fm):
                grads = torch.autograd.grad(mean_nll(model, row), hm + fm)
            for j in range(len(layers)):
                acc_h[j] += grads[j].abs()
                acc_f[j] += grads[len(layers) + j].abs()
                signed_f[j] += grads[len(layers) + j]
            n += 1
    imp_h, imp_f = unit_importance(model, layers, batches, proxy=False, dropout=0.0)
    for j in range(len(layers)):
        torch.testing.assert_close(imp_h[j], _standardised_tanh(acc_h[j] / n), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(imp_f[j], _standardised_tanh(acc_f[j] / n), rtol=1e-4, atol=1e-5)
    # the signed mean ranks the FFN neurons differently here, so the test tells the two apart
    assert not any(torch.allclose(_standardised_tanh(s / n), f, atol=1e-3) for s, f in zip(signed_f, imp_f))


# --------------------------------------------------------------------------------- OSFT

def test_osft_importance_is_sublayer_input_output_cosine_on_previous_task_text():
    """I(l) = mean cos(X_l, Y_l) of each attention / MLP sublayer (residual left out) on the pre-training
    text and earlier tasks' documents. Fails on the residual-included block cosine on the current task."""
    from metacl.strategies.osft import OSFT, decoder_layers

    seen = ["an earlier task document about ships."]
    model = tiny_model()
    ctx = make_ctx(model, seen_docs=seen)
    s = OSFT(osft_docs=100)
    s.before_task(ctx)

    layers = decoder_layers(model)
    sums = {(i, p): 0.0 for i in range(len(layers)) for p in ("attn", "mlp")}
    block = {i: 0.0 for i in range(len(layers))}
    count = 0
    grabbed = {}

    def grab(key):
        def fn(mod, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            grabbed[key] = (x, out[0] if isinstance(out, tuple) else out)
        return fn

    hooks = []
    for i, L in enumerate(layers):
        hooks += [L.self_attn.register_forward_hook(grab((i, "attn")), with_kwargs=True),
                  L.mlp.register_forward_hook(grab((i, "mlp")), with_kwargs=True),
                  L.register_forward_hook(grab((i, "block")), with_kwargs=True)]
    with torch.no_grad():
        for text in OLD + seen:
            b = tokenize_docs(CharTokenizer(), [text], 48)
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            for key, (x, y) in grabbed.items():
                c = float(torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).sum())
                if key[1] == "block":
                    block[key[0]] += c
                else:
                    sums[key] += c
            count += b["input_ids"].shape[1]
    for h in hooks:
        h.remove()
    for i in range(len(layers)):
        for p in ("attn", "mlp"):
            assert s.importance[i][p] == pytest.approx(min(1.0, max(0.0, sums[(i, p)] / count)), abs=1e-5)
            assert abs(s.importance[i][p] - block[i] / count) > 0.05          # not the residual-included cosine
    # the current task's documents do not enter the importance; the previous tasks' do
    other = OSFT(osft_docs=100)
    other.before_task(make_ctx(model, train_docs=["entirely different current documents 123."], seen_docs=seen))
    assert other.importance == s.importance
    assert ctx.scratch["osft"]["importance_source"] == "previous"
    third = OSFT(osft_docs=100)
    third.before_task(make_ctx(model, seen_docs=seen + ["one more earlier task text of numbers 0123456789."]))
    assert third.importance != s.importance


# ---------------------------------------------------------------------------------- CLI

def _metacl(*args):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "metacl", *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_strategies_name_prints_formula_options_and_adaptation():
    r = _metacl("ckl", "strategies", "recadam")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "formula:" in out and "lambda(t)" in out and "lr (1-lambda(t)) gamma (theta' - theta_0)" in out
    assert "--recadam-gamma (default 100.0)" in out and "--recadam-t0 (default 0.1)" in out
    assert "adapted:" in out
    r = _metacl("ckl", "strategies", "no_such_method")
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "unknown strategy 'no_such_method'" in r.stderr
    r = _metacl("ckl", "strategies")
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.strip()}
    assert "diagonal" in lines["ncl"] and "2L+1" in lines["tasl"]


def test_every_strategy_has_a_card_with_formula_options_and_one_adaptation_sentence():
    import metacl.strategies as strategies
    from metacl.strategies.cards import CARDS, describe

    assert set(CARDS) == set(strategies.REGISTRY)
    for name, cls in strategies.REGISTRY.items():
        text = describe(name)
        assert text.startswith(f"{name}: ") and "\nformula:\n  " in text and "\noptions:\n" in text
        adapted = CARDS[name].adapted
        assert adapted.endswith(".") and adapted.count(". ") == 0, name   # one sentence
        import argparse

        p = argparse.ArgumentParser(add_help=False)
        cls.add_args(p)
        for a in p._actions:
            assert f"{a.option_strings[0]}" in text and f"(default {a.default!r})" in text
