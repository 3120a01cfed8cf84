"""`salient_span` control: weight 1 exactly on the tokens of capitalised words and numbers, in label layout."""

from __future__ import annotations

import pytest
import torch

from metacl.core.batching import collate, encode_docs
from metacl.ckl.train import step_loss
from metacl.engine.losses import nll_from_logits as token_nll
from metacl.models.loading import load_model_and_tokenizer
from metacl.models.pretrain import tiny_model_for_tests
from metacl.strategies import get_strategy
from metacl.strategies.base import TrainContext
from metacl.strategies.salient_span import salient_char_spans


DOCS = ["Ada Quill works for Northwind Labs since 1987 .", "the river runs to the sea in 3 days ."]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = tiny_model_for_tests(tmp_path_factory.mktemp("ss"), texts=DOCS * 5)
    return load_model_and_tokenizer(path)


def test_char_spans_are_capitalised_words_and_numbers():
    text = "Ada met 'Bo' in 1987, the 3rd time; dr. McArthur-Smith left B-52 behind."
    got = [text[a:b] for a, b in salient_char_spans(text)]
    assert got == ["Ada", "Bo", "1987", "3rd", "McArthur-Smith", "B-52"]


def test_weights_mark_exactly_the_salient_tokens_in_label_layout(lm):
    model, tok = lm
    strat = get_strategy("salient_span")()
    windows = encode_docs(tok, DOCS, 64)
    batch = collate(windows, tok.pad_token_id)
    ctx = TrainContext(model=model, tokenizer=tok, device=torch.device("cpu"), train_docs=DOCS)
    nll = torch.zeros(batch["input_ids"].shape)
    w = strat.token_weights(ctx, batch, nll)
    assert w.shape == batch["input_ids"].shape
    for r, ids in enumerate(windows):
        marked = "".join(tok.decode([ids[t]]) for t in range(len(ids)) if w[r, t] == 1).split()
        unmarked = "".join(tok.decode([ids[t]]) for t in range(len(ids)) if w[r, t] == 0)
        if r == 0:
            assert marked == ["Ada", "Quill", "Northwind", "Labs", "1987"], marked
            assert "works" in unmarked and "since" in unmarked
        else:
            assert marked == ["3"], marked
        assert float(w[r, len(ids):].abs().sum()) == 0.0, "padding never counts"
        assert w[r, 0] == 0, "nothing predicts the first token"
    assert set(w.unique().tolist()) <= {0.0, 1.0}


def test_loop_loss_is_the_mean_nll_of_predicting_the_salient_tokens(lm):
    """Through the real training loop: loss = mean over salient positions t of -log p(token t | tokens < t)."""
    model, tok = lm
    strat = get_strategy("salient_span")()
    windows = encode_docs(tok, DOCS[:1], 64)
    batch = collate(windows, tok.pad_token_id)
    ctx = TrainContext(model=model, tokenizer=tok, device=torch.device("cpu"), train_docs=DOCS[:1])
    with torch.no_grad():
        loss = step_loss([strat], ctx, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        nll = token_nll(logits, batch["labels"])[0]
        ids = windows[0]
        logp = torch.log_softmax(logits[0], -1)
        salient = [t for t in range(1, len(ids)) if tok.decode([ids[t]]).strip() in {"Ada", "Quill", "Northwind", "Labs", "1987"}]
        by_hand = torch.stack([-logp[t - 1, ids[t]] for t in salient]).mean()
    assert len(salient) >= 5
    assert torch.allclose(nll[salient].mean(), by_hand, atol=1e-5)
    assert torch.allclose(loss, by_hand, atol=1e-5)
    plain = step_loss([get_strategy("finetune")()], ctx, batch)
    assert not torch.allclose(loss, plain), "the control must differ from plain fine-tuning"
