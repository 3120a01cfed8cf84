"""TokenWeighter (shape, range, save/load, tokenizer check) and the taalm / oracle / random strategies."""

from __future__ import annotations

import json

import pytest
import torch

from metacl.errors import MetaclError
from metacl.meta.token_weighting import TokenWeighter
from metacl.models.loading import load_model_and_tokenizer
from metacl.models.pretrain import tiny_model_for_tests

DOCS = ["Ovar Lind was born in Kestrel and works as a potter.", "The river Amsel flows into Lake Tarn."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_model_for_tests(tmp_path_factory.mktemp("lm"), texts=DOCS, seed=0)
    model, tok = load_model_and_tokenizer(path)
    return path, model, tok


def _batch(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def test_shape_range_and_start_near_one(tiny):
    _, model, tok = tiny
    tw = TokenWeighter.from_base_lm(model, tok)
    b = _batch(tok, DOCS)
    w = tw(b["input_ids"], b["attention_mask"])
    assert w.shape == b["input_ids"].shape
    real = b["attention_mask"].bool().clone()
    real[:, 0] = False
    assert torch.all(w[real] > 0) and torch.all(w[real] < 1)
    assert torch.all(w[real] > 0.95), "head bias +4 should start every weight near 1"
    assert torch.all(w[~real] == 0), "padding and position 0 carry no weight"
    # the copy is independent of the base LM
    body = dict(model.named_parameters())
    p = next(iter(tw.backbone.parameters()))
    assert all(p.data_ptr() != q.data_ptr() for q in body.values())


def test_save_load_round_trip(tiny, tmp_path):
    _, model, tok = tiny
    tw = TokenWeighter.from_base_lm(model, tok)
    with torch.no_grad():
        tw.head.weight.normal_(0, 0.5)  # make the output depend on the backbone
    b = _batch(tok, DOCS)
    want = tw(b["input_ids"], b["attention_mask"])
    tw.save_pretrained(tmp_path / "tw")
    assert (tmp_path / "tw" / "head.safetensors").is_file()
    assert json.loads((tmp_path / "tw" / "token_weighter.json").read_text())["kind"] == "metacl.TokenWeighter"
    back = TokenWeighter.from_pretrained(tmp_path / "tw", base_tokenizer=tok)
    got = back(b["input_ids"], b["attention_mask"])
    assert torch.allclose(want, got, atol=1e-6)
    assert back.tokenizer.get_vocab() == tok.get_vocab()
    with pytest.raises(MetaclError, match="not a token weighter"):
        TokenWeighter.from_pretrained(tmp_path)


def test_other_tokenizer_is_refused(tiny, tmp_path):
    path, model, tok = tiny
    other = tiny_model_for_tests(tmp_path / "other", texts=["zz yy xx ww " * 20], vocab_size=300)
    with pytest.raises(MetaclError, match="tokenizer differs"):
        TokenWeighter.from_model_path(other, tok)
    tw = TokenWeighter.from_model_path(path, tok)  # same tokenizer: accepted
    assert tw.head.bias.item() == pytest.approx(4.0)
    # a saved weighter of another tokenizer is refused when deployed
    _, tok2 = load_model_and_tokenizer(other)
    tw.save_pretrained(tmp_path / "tw")
    with pytest.raises(MetaclError, match="tokenizer differs"):
        TokenWeighter.from_pretrained(tmp_path / "tw", base_tokenizer=tok2)


def _ctx(model, tok):
    from metacl.strategies.base import TrainContext

    return TrainContext(model=model, tokenizer=tok, device=torch.device("cpu"), train_docs=DOCS)


def test_taalm_strategy_uses_predictor_weights(tiny, tmp_path):
    from metacl.strategies import get_strategy

    _, model, tok = tiny
    tw = TokenWeighter.from_base_lm(model, tok)
    with torch.no_grad():
        tw.head.weight.normal_(0, 0.5)
    tw.save_pretrained(tmp_path / "tw")
    with pytest.raises(MetaclError, match="--taalm-predictor"):
        get_strategy("taalm")()
    s = get_strategy("taalm")(taalm_predictor=str(tmp_path / "tw"))
    ctx = _ctx(model, tok)
    s.before_task(ctx)
    b = _batch(tok, DOCS)
    b["labels"][0, 3] = -100  # an ignored label gets weight 0
    nll = torch.ones(b["labels"].shape)
    w = s.token_weights(ctx, b, nll)
    ref = tw(b["input_ids"], b["attention_mask"]).detach() * (b["labels"] != -100)
    assert torch.allclose(w, ref, atol=1e-6)
    assert w[0, 3] == 0 and w.requires_grad is False


def test_oracle_marks_object_tokens(tiny, tmp_path):
    from metacl.strategies import get_strategy

    _, model, tok = tiny
    data = tmp_path / "tl.jsonl"
    data.write_text(json.dumps({"evidence": DOCS[0], "object": "Kestrel"}) + "\n")
    s = get_strategy("oracle")(oracle_data=str(data))
    b = _batch(tok, DOCS)
    w = s.token_weights(_ctx(model, tok), b, torch.ones(b["labels"].shape))
    ids = b["input_ids"][0][w[0] == 1].tolist()
    assert tok.decode(ids).strip() == "Kestrel"
    assert w[0].sum() == len(ids) and set(w[0].unique().tolist()) <= {0.0, 1.0}
    # a document without a known object falls back to plain fine-tuning weights
    assert torch.equal(w[1], (b["labels"][1] != -100).float())
    with pytest.raises(MetaclError, match="--oracle-data"):
        get_strategy("oracle")()


def test_random_keeps_predictor_mean_but_not_placement(tiny, tmp_path):
    from metacl.strategies import get_strategy

    _, model, tok = tiny
    tw = TokenWeighter.from_base_lm(model, tok)
    with torch.no_grad():
        tw.head.weight.normal_(0, 1.0)
    tw.save_pretrained(tmp_path / "tw")
    s = get_strategy("random")(random_predictor=str(tmp_path / "tw"), seed=1)
    ctx = _ctx(model, tok)
    b = _batch(tok, DOCS)
    nll = torch.ones(b["labels"].shape)
    w = s.token_weights(ctx, b, nll)
    ref = tw(b["input_ids"], b["attention_mask"]).detach() * (b["labels"] != -100)
    for r in range(len(DOCS)):
        assert torch.allclose(w[r].sort().values, ref[r].sort().values, atol=1e-6)  # same weights ...
    assert not torch.allclose(w, ref)                                              # ... elsewhere
    assert torch.equal(w, s.token_weights(ctx, b, nll)), "fixed per document across epochs"
    u = get_strategy("random")(random_mean=0.3, seed=0).token_weights(ctx, b, nll)
    lab = b["labels"] != -100
    assert abs(u[lab].mean().item() - 0.3) < 0.12 and u.max() <= 0.6 + 1e-6


def test_visualize_png_and_html(tiny, tmp_path):
    from metacl.meta.visualize import shade_document

    _, model, tok = tiny
    tw = TokenWeighter.from_base_lm(model, tok)
    with torch.no_grad():
        tw.head.weight.normal_(0, 1.0)
    png = shade_document(tw, tok, DOCS[0], tmp_path / "doc.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = shade_document(tw, tok, DOCS[0], tmp_path / "doc.html").read_text()
    import html
    import re

    text = html.unescape("".join(re.findall(r"<span[^>]*>(.*?)</span>", page)))
    assert text.strip() == DOCS[0]  # every token shown, in order
    ids = tok(DOCS[0])["input_ids"]
    assert page.count("<span") == len(ids) - 1  # one span per token, BOS dropped
