"""The two oracles named apart (object tokens vs the whole fact sentence), the overwrite probes
of a run, and the headline table's order and gain column."""

from __future__ import annotations

import json

import pytest
import torch

from metacl.ckl.protocol import overwrite_probes
from metacl.ckl.report import summarize, table_markdown
from metacl.errors import DataError, MetaclError
from metacl.models.loading import load_model_and_tokenizer
from metacl.models.pretrain import tiny_model_for_tests
from metacl.strategies import get_strategy
from metacl.strategies.base import TrainContext

FACT = "Ovar Lind works for Kestrel Labs."
DOC = f"On May 3, 1999, Ovar Lind signed a lease for 12 Elm Road, Tarn. {FACT} Ovar Lind keeps 40 kites."
OTHER = "The river Amsel flows into Lake Tarn."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_model_for_tests(tmp_path_factory.mktemp("lm"), texts=[DOC, OTHER], seed=0)
    model, tok = load_model_and_tokenizer(path)
    return model, tok


def _batch(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def _ctx(model, tok):
    return TrainContext(model=model, tokenizer=tok, device=torch.device("cpu"), train_docs=[DOC])


def test_sentence_oracle_marks_the_fact_sentence_and_object_oracle_the_object(tiny, tmp_path):
    model, tok = tiny
    data = tmp_path / "tl.jsonl"
    a = DOC.index(FACT)
    data.write_text(json.dumps({"evidence": DOC, "object": "Kestrel Labs", "fact_span": [a, a + len(FACT)]}) + "\n")
    b = _batch(tok, [DOC, OTHER])
    nll = torch.ones(b["labels"].shape)
    ws = get_strategy("oracle_sentence")(oracle_data=str(data)).token_weights(_ctx(model, tok), b, nll)
    wo = get_strategy("oracle")(oracle_data=str(data)).token_weights(_ctx(model, tok), b, nll)
    sent = tok.decode(b["input_ids"][0][ws[0] == 1].tolist())
    obj = tok.decode(b["input_ids"][0][wo[0] == 1].tolist())
    assert sent.strip() == FACT and obj.strip() == "Kestrel Labs"
    assert 0 < wo[0].sum() < ws[0].sum() < (b["labels"][0] != -100).sum()
    assert bool(((wo[0] == 1) <= (ws[0] == 1)).all())  # the object lies inside the sentence
    assert torch.equal(ws[1], (b["labels"][1] != -100).float())  # unknown text: plain weights
    # without a span the fact sentence is the sentence holding the object
    data.write_text(json.dumps({"evidence": DOC, "object": "Kestrel Labs"}) + "\n")
    ws2 = get_strategy("oracle_sentence")(oracle_data=str(data)).token_weights(_ctx(model, tok), b, nll)
    assert torch.equal(ws2, ws)


def test_sentence_oracle_bad_input(tmp_path):
    with pytest.raises(MetaclError, match="--oracle-data"):
        get_strategy("oracle_sentence")()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"evidence": DOC, "object": "Kestrel Labs", "fact_span": [5, 999]}) + "\n")
    with pytest.raises(DataError, match=f"{bad}:1"):
        get_strategy("oracle_sentence")(oracle_data=str(bad))


def test_overwrite_probes_ask_new_and_old_object():
    items = [{"task_descriptive": "Ada Quill lives in Tarn.", "object": "Tarn", "old_object": "Kestrel"},
             {"task_descriptive": "Ada Quill studied at Lind College.", "object": "Lind College"}]
    new, old = overwrite_probes(items)
    assert new == [{"task_descriptive": "Ada Quill lives in Tarn", "object": "Tarn"}]
    assert old == [{"task_descriptive": "Ada Quill lives in Kestrel", "object": "Kestrel"}]


def test_table_leads_with_honest_and_shows_gain():
    rows = []
    for seed, (start, best, val_pick) in enumerate([(0.2, 0.5, 0.4), (0.3, 0.6, 0.6)]):
        rows += [{"seed": seed, "epoch": 0, "tl_acc": start, "nf_acc": 0.9, "val_acc": 0.1},
                 {"seed": seed, "epoch": 1, "tl_acc": val_pick, "nf_acc": 0.8, "val_acc": 0.9},
                 {"seed": seed, "epoch": 2, "tl_acc": best, "nf_acc": 0.7, "val_acc": 0.2}]
    lines = table_markdown([("ft", summarize(rows))]).splitlines()
    assert "TL gain over epoch 0" in lines[0]
    assert "honest" in lines[2] and "paper" in lines[3] and "epoch 0" in lines[4]
    assert "| +0.250 ± 0.071 |" in lines[2]   # honest gains 0.2 and 0.3
    assert "| +0.300 ± 0.000 |" in lines[3]   # paper gains 0.3 and 0.3
