"""The issue-19 options of token-weighter meta-training: each changes the computation as claimed, defaults do not.

Options (metacl.meta.options): inner_norm="tokens" (unnormalised weights, train and deploy),
weight_head="softplus", temperature, sparsity, learn_inner_lr.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from metacl.core.batching import collate, encode_docs
from metacl.ckl.train import step_loss
from metacl.engine.losses import nll_from_logits as token_nll
from metacl.errors import MetaclError
from metacl.meta import options
from metacl.meta.token_weighting import TokenWeighter
from metacl.meta.train_token_weighting import MetaConfig, MetaTrainer, meta_objective, pad, encode_document
from metacl.strategies import get_strategy
from metacl.strategies.base import TrainContext
from test_token_weighting_meta import fresh_model, planted, toy  # noqa: F401  (fixture)


def _doc_batch(tok, ex, w=None):
    docs = pad([encode_document(tok, e.document, 32) for e in ex], tok.pad_token_id)
    docs["token_weights"] = w if w is not None else torch.rand(docs["input_ids"].shape, generator=torch.Generator().manual_seed(0))
    return docs


def _toy_trainer(path, tok, out, n_docs: int = 4, **cfg) -> MetaTrainer:
    """A MetaTrainer (seed 0) on `n_docs` planted-key documents with the toy's SGD settings; `cfg` overrides them."""
    torch.manual_seed(0)
    c = MetaConfig(**{"inner_optimizer": "sgd", "inner_lr": 0.1, "meta_batch": 2, "val_every": 0, "max_length": 32, **cfg})
    return MetaTrainer(fresh_model(path), tok, [planted(random.Random(i))[0] for i in range(n_docs)], out, c, progress=False)


def _hidden(tw, batch):
    return tw.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def test_inner_norm_tokens_divides_by_the_token_count_and_sees_the_scale(toy):  # noqa: F811
    from metacl.engine.losses import label_mask, token_nll as engine_nll

    path, tok = toy
    model = fresh_model(path)
    params = {n: p.detach() for n, p in model.named_parameters()}
    b = _doc_batch(tok, [planted(random.Random(0))[0]])
    nll = engine_nll(model, params, b)
    mask = label_mask(b)
    w = b["token_weights"]
    by_hand = (w * mask * nll).sum() / mask.sum()
    tokens, weights = options.doc_loss("tokens"), options.doc_loss("weights")
    assert torch.allclose(tokens(model, params, b), by_hand, atol=1e-6)
    assert torch.allclose(weights(model, params, b), (w * mask * nll).sum() / (w * mask).sum(), atol=1e-6)
    b2 = dict(b, token_weights=2 * w)
    assert torch.allclose(tokens(model, params, b2), 2 * by_hand, atol=1e-6), "unnormalised: the scale counts"
    assert torch.allclose(weights(model, params, b2), weights(model, params, b), atol=1e-6), "normalised: it does not"


def test_inner_norm_tokens_is_saved_and_deployed_by_taalm(toy, tmp_path):  # noqa: F811
    """A weighter meta-trained with inner_norm=tokens says so, and `taalm` then trains with sum(w*nll)/n_tokens."""
    path, tok = toy
    tr = _toy_trainer(path, tok, tmp_path / "run", inner_norm="tokens", steps=1)
    tr.run()
    saved = json.loads((tmp_path / "run" / "best" / "token_weighter.json").read_text())
    assert saved["loss_norm"] == "tokens"
    model = fresh_model(path)
    docs = [planted(random.Random(9))[0].document]
    batch = collate(encode_docs(tok, docs, 32), tok.pad_token_id)
    ctx = TrainContext(model=model, tokenizer=tok, device=torch.device("cpu"), train_docs=docs)
    taalm = get_strategy("taalm")(taalm_predictor=str(tmp_path / "run"))
    taalm.before_task(ctx)
    assert taalm.token_weight_norm == "tokens"
    shuffled = get_strategy("random")(random_predictor=str(tmp_path / "run"))
    shuffled.before_task(ctx)
    assert shuffled.token_weight_norm == "tokens", "the random control uses the weights the same way"
    with torch.no_grad():
        loss = step_loss([taalm], ctx, batch)
        nll = token_nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(),
                        batch["labels"])
        w = taalm.token_weights(ctx, batch, nll)
        mask = (batch["labels"] != -100).float()
        mask[:, 0] = 0
    assert torch.allclose(loss, (w * nll).sum() / mask.sum(), atol=1e-6)
    assert not torch.allclose(loss, (w * nll).sum() / w.sum(), atol=1e-4)
    default = TokenWeighter.from_base_lm(model, tok)
    assert default.loss_norm == "weights" and get_strategy("finetune")().token_weight_norm == "weights"


def test_softplus_head_starts_at_one_is_unbounded_and_round_trips(toy, tmp_path):  # noqa: F811
    path, tok = toy
    model = fresh_model(path)
    torch.manual_seed(0)
    tw = TokenWeighter.from_base_lm(model, tok, activation="softplus")
    b = _doc_batch(tok, [planted(random.Random(1))[0]])
    with torch.no_grad():
        w = tw(b["input_ids"], b["attention_mask"])
        assert w[0, 1:].sub(1).abs().max() < 1e-2, "starts at weight 1 (plain fine-tuning)"
        z = tw.head(_hidden(tw, b)).squeeze(-1)
        assert torch.allclose(w[0, 1:], torch.nn.functional.softplus(z)[0, 1:], atol=1e-6)
        tw.head.bias.add_(3.0)
        assert tw(b["input_ids"], b["attention_mask"])[0, 1:].min() > 3.0, "weights are not capped at 1"
    tw.save_pretrained(tmp_path / "tw")
    back = TokenWeighter.from_pretrained(tmp_path / "tw", base_tokenizer=tok)
    assert back.activation == "softplus"
    with torch.no_grad():
        assert torch.allclose(back(b["input_ids"], b["attention_mask"]), tw(b["input_ids"], b["attention_mask"]), atol=1e-6)


def test_temperature_sharpens_weights_and_scales_the_head_gradient(toy, tmp_path):  # noqa: F811
    path, tok = toy
    model = fresh_model(path)
    b = _doc_batch(tok, [planted(random.Random(2))[0]])
    torch.manual_seed(0)
    t1 = TokenWeighter.from_base_lm(model, tok)
    torch.manual_seed(0)
    t4 = TokenWeighter.from_base_lm(model, tok, temperature=0.25)
    with torch.no_grad():
        assert torch.allclose(t1(b["input_ids"], b["attention_mask"]), t4(b["input_ids"], b["attention_mask"]), atol=1e-6), \
            "same start at every temperature"
        for t in (t1, t4):
            t.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
            t.head.bias.zero_()
        z = t1.head(_hidden(t1, b)).squeeze(-1)
        w1, w4 = t1(b["input_ids"], b["attention_mask"]), t4(b["input_ids"], b["attention_mask"])
        assert torch.allclose(w4[0, 1:], torch.sigmoid(z / 0.25)[0, 1:], atol=1e-6)
        sharp = lambda w: (w[0, 1:] - 0.5).abs().mean()
        assert sharp(w4) > sharp(w1), "T < 1 pushes weights towards 0/1"
        t4.head.weight.mul_(0.25)  # same logits z/T as t1 now: same weights ...
        t4.head.bias.mul_(0.25)
    w1, w4 = t1(b["input_ids"], b["attention_mask"]), t4(b["input_ids"], b["attention_mask"])
    assert torch.allclose(w1, w4, atol=1e-6)
    g1 = torch.autograd.grad(w1.sum(), t1.head.weight)[0]
    g4 = torch.autograd.grad(w4.sum(), t4.head.weight)[0]
    assert torch.allclose(g4, g1 / 0.25, rtol=1e-4, atol=1e-7), "... and a 1/T larger gradient on the head"
    t4.save_pretrained(tmp_path / "t4")
    assert TokenWeighter.from_pretrained(tmp_path / "t4").temperature == 0.25


def test_sparsity_adds_lambda_times_mean_weight_and_lowers_the_weights(toy, tmp_path):  # noqa: F811
    path, tok = toy
    model = fresh_model(path)
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    tw = TokenWeighter.from_base_lm(model, tok)
    ex = [planted(random.Random(i))[0] for i in range(2)]
    base = MetaConfig(inner_optimizer="sgd", inner_lr=0.1, meta_batch=2, max_length=32)
    with torch.no_grad():
        a = meta_objective(tw, model, tok, ex, base)
        b = meta_objective(tw, model, tok, ex, MetaConfig(**{**base.__dict__, "sparsity": 0.7}))
    assert float(b["loss"] - a["loss"]) == pytest.approx(0.7 * float(a["mean_weight"]), rel=1e-5)

    def mean_after(sparsity):
        tr = _toy_trainer(path, tok, tmp_path / f"s{sparsity}", steps=3, outer_lr=1e-2, sparsity=sparsity)
        return [tr.meta_step()["mean_weight"] for _ in range(4)]

    sparse, plain = mean_after(5.0), mean_after(0.0)
    assert all(b < a for a, b in zip(sparse, sparse[1:])), sparse  # the penalty dominates: weights fall every step
    assert sparse[-1] < plain[-1]


def test_learned_inner_lr_is_the_sgd_rate_gets_a_meta_gradient_and_resumes(toy, tmp_path, monkeypatch):  # noqa: F811
    from test_token_weighting_production import _float64_everywhere

    _float64_everywhere(monkeypatch)  # HF Llama's float32 softmax/RMSNorm would swamp a small finite difference
    path, tok = toy
    model = fresh_model(path).double()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    tw = TokenWeighter.from_base_lm(model, tok).double()
    ex = [planted(random.Random(i))[0] for i in range(2)]
    cfg = MetaConfig(inner_optimizer="sgd", inner_lr=0.3, meta_batch=2, max_length=32, learn_inner_lr=True)
    log_lr = torch.tensor(math.log(0.3), dtype=torch.float64, requires_grad=True)
    out = meta_objective(tw, model, tok, ex, cfg, log_inner_lr=log_lr)
    fixed = meta_objective(tw, model, tok, ex, MetaConfig(**{**cfg.__dict__, "learn_inner_lr": False}))
    assert torch.allclose(out["loss"], fixed["loss"], atol=1e-10), "exp(log_lr) is exactly the SGD rate"
    grad, = torch.autograd.grad(out["loss"], log_lr)
    eps = 1e-6
    with torch.no_grad():
        up = meta_objective(tw, model, tok, ex, cfg, log_inner_lr=log_lr + eps)["loss"]
        down = meta_objective(tw, model, tok, ex, cfg, log_inner_lr=log_lr - eps)["loss"]
    assert float(grad) == pytest.approx(float(up - down) / (2 * eps), rel=1e-4)
    assert abs(float(grad)) > 1e-4

    def trainer(out, steps):
        return _toy_trainer(path, tok, out, inner_lr=0.3, steps=steps, outer_lr=1e-2, learn_inner_lr=True)

    full = trainer(tmp_path / "a", 4)
    res = full.run()
    assert res["inner_lr"] != pytest.approx(0.3, abs=1e-4), "the outer optimizer moved the inner rate"
    rows = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all("inner_lr" in r for r in rows)
    trainer(tmp_path / "b", 2).run()
    resumed = trainer(tmp_path / "b", 4)
    resumed.run(resume=True)
    assert torch.equal(full.log_inner_lr, resumed.log_inner_lr)


def test_defaults_change_nothing_and_options_enter_the_checkpoint_identity():
    d = MetaConfig()
    assert not set(options.DEFAULTS) & set(d.identity()), "old checkpoints (before the options) still resume"
    assert MetaConfig(inner_norm="tokens").identity()["inner_norm"] == "tokens"
    assert MetaConfig(inner_norm="tokens").identity() != d.identity()
    for bad in ({"temperature": 0.0}, {"sparsity": -1.0}, {"inner_norm": "sum"}, {"weight_head": "relu"}):
        with pytest.raises(MetaclError):
            options.check(MetaConfig(**bad))


def test_cli_options_reach_the_saved_weighter(tmp_path, capsys):
    from metacl.cli.main import main
    from metacl.data.world import write_world
    from metacl.models.pretrain import tiny_model_for_tests

    world = tmp_path / "world"
    write_world(world, 20, seed=0)
    lm = tiny_model_for_tests(tmp_path / "lm", vocab_size=360,
                              texts=[json.loads(l)["text"] for l in (world / "pretrain_corpus.jsonl").read_text().splitlines()[:100]])
    common = ["meta-train", "token-weighting", "--model", str(lm), "--data", str(world), "--steps", "1",
              "--meta-batch", "2", "--val-every", "0", "--max-length", "48", "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "tw"), "--inner-norm", "tokens", "--weight-head", "softplus",
                          "--weight-temperature", "0.5", "--sparsity", "0.1", "--inner-optimizer", "sgd",
                          "--learn-inner-lr"]) == 0
    saved = json.loads((tmp_path / "tw" / "best" / "token_weighter.json").read_text())
    assert (saved["activation"], saved["temperature"], saved["loss_norm"]) == ("softplus", 0.5, "tokens")
    assert saved["meta_config"]["learn_inner_lr"] is True and saved["meta_config"]["sparsity"] == 0.1
    assert "inner_lr" in json.loads((tmp_path / "tw" / "summary.json").read_text())
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "bad"), "--weight-temperature", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weight-temperature" in err[0]
    assert not (tmp_path / "bad").exists()
    assert main(common + ["--steps", "2", "--out", str(tmp_path / "span"), "--span-supervision", "1", "--span-share", "0.5",
                          "--span-warmup", "1"]) == 0  # argparse keeps the last --steps
    cfg = json.loads((tmp_path / "span" / "best" / "token_weighter.json").read_text())["meta_config"]
    assert (cfg["span_supervision"], cfg["span_share"], cfg["span_warmup"]) == (1.0, 0.5, 1)
    rows = [json.loads(l) for l in (tmp_path / "span" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("span_warmup", False) for r in rows if "meta_loss" in r] == [True, False]
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "bad2"), "--span-warmup", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--span-warmup" in err[0]
    assert not (tmp_path / "bad2").exists()


def test_span_supervision_adds_lambda_bce_on_the_answer_tokens_and_raises_their_weight(toy, tmp_path):  # noqa: F811
    """The target is the oracle's mask of the meta-train document (the object's tokens); a few steps move weight onto it."""
    path, tok = toy
    model = fresh_model(path)
    for p in model.parameters():
        p.requires_grad_(False)
    ex = [planted(random.Random(i))[0] for i in range(2)]
    docs = pad([encode_document(tok, e.document, 32) for e in ex], tok.pad_token_id)
    target = options.answer_masks(tok, docs["input_ids"], docs["attention_mask"], [e.object for e in ex])
    for row, e, ids in zip(target, ex, docs["input_ids"]):
        marked = [tok.decode([int(i)]).strip() for i, t in zip(ids, row) if t]
        assert marked == [e.object], (marked, e.object)  # exactly the value token, nothing else
    torch.manual_seed(0)
    tw = TokenWeighter.from_base_lm(model, tok)
    base = MetaConfig(inner_optimizer="sgd", inner_lr=0.1, meta_batch=2, max_length=32)
    with torch.no_grad():
        a = meta_objective(tw, model, tok, ex, base)
        b = meta_objective(tw, model, tok, ex, MetaConfig(**{**base.__dict__, "span_supervision": 0.5}))
    assert "span_bce" not in a and float(b["span_bce"]) > 0
    assert float(b["loss"] - a["loss"]) == pytest.approx(0.5 * float(b["span_bce"]), rel=1e-5)

    def value_minus_filler(lam):
        tr = _toy_trainer(path, tok, tmp_path / f"s{lam}", n_docs=8, steps=40, outer_lr=3e-2, span_supervision=lam)
        rows = [tr.meta_step() for _ in range(40)]
        e, v = planted(random.Random(100))
        d = pad([encode_document(tok, e.document, 32)], tok.pad_token_id)
        with torch.no_grad():
            w = tr.weighter(d["input_ids"], d["attention_mask"])[0]
        m = options.answer_masks(tok, d["input_ids"], d["attention_mask"], [v])[0].bool()
        m[0] = False
        keep = d["attention_mask"][0].bool().clone()
        keep[0] = False
        return float(w[m].mean() - w[keep & ~m].mean()), rows

    gap, rows = value_minus_filler(2.0)
    assert max(r["span_bce"] for r in rows[-5:]) < rows[0]["span_bce"] / 2
    assert gap > 0.5, gap  # on a held-out document: the answer token now outweighs the filler
    with pytest.raises(MetaclError):
        options.check(MetaConfig(span_supervision=1.0, weight_head="softplus"))
    with pytest.raises(MetaclError):
        options.check(MetaConfig(span_supervision=-1.0))


def test_span_share_is_minus_log_answer_mass_share_and_ignores_scale():
    w = torch.tensor([[0.0, 0.2, 0.6, 0.2, 9.0], [0.0, 0.5, 0.5, 0.0, 0.0]])
    t = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    lab = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.float32)  # the 9.0 is padding
    got = options.span_share_loss(w, t, lab)
    assert float(got) == pytest.approx(-math.log(0.6 / 1.0))  # the document without an answer is left out
    assert float(options.span_share_loss(3 * w, t, lab)) == pytest.approx(float(got))
    assert float(options.span_share_loss(torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]]), t[:1], lab[:1])) == pytest.approx(0.0)
    with pytest.raises(MetaclError):
        options.check(MetaConfig(span_share=-0.5))


def test_span_warmup_steps_skip_the_inner_loop_then_the_bilevel_loss_takes_over(toy, tmp_path, monkeypatch):  # noqa: F811
    import metacl.engine as engine

    path, tok = toy
    calls = []
    real = engine.unroll
    monkeypatch.setattr(engine, "unroll", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    tr = _toy_trainer(path, tok, tmp_path / "w", steps=5, outer_lr=1e-2, span_supervision=1.0, span_warmup=3)
    rows = [tr.meta_step() for _ in range(5)]
    assert [r.get("span_warmup", False) for r in rows] == [True, True, True, False, False]
    assert [r["query_nll"] is None for r in rows] == [True, True, True, False, False]
    assert len(calls) == 2  # only the two bilevel steps ran the inner loop
    with pytest.raises(MetaclError):
        options.check(MetaConfig(span_warmup=2))  # nothing to warm up with
