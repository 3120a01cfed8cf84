"""The probe metric on cases whose answer is computed by hand.

A bigram "model" (the next token is a fixed function of the current token) makes the argmax at
every position known in advance, so expected accuracies are plain fractions.
"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from metacl.core.probes import object_token_positions, probe_accuracy, split_probe


def word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>"] + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


class Bigram(nn.Module):
    """logits[b, t] = one-hot(next[input_ids[b, t]]): argmax is exactly the table entry."""

    def __init__(self, vocab_size, table):
        super().__init__()
        nxt = torch.zeros(vocab_size, dtype=torch.long)
        for a, b in table.items():
            nxt[a] = b
        self.register_buffer("nxt", nxt)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
        logits = torch.nn.functional.one_hot(self.nxt[input_ids], self.nxt.numel()).float()
        return SimpleNamespace(logits=logits + 0 * self.dummy)


SENT = "Ada works for Northwind Labs Group ."
ITEM = {"task_descriptive": SENT, "object": "Northwind Labs Group", "uuid": "u1"}


def chain_model(tok, sentence, overrides=None):
    ids = tok(sentence)["input_ids"]
    table = {a: b for a, b in zip(ids, ids[1:])}
    for a, b in (overrides or {}).items():
        table[tok.convert_tokens_to_ids(a)] = tok.convert_tokens_to_ids(b)
    return Bigram(len(tok), table)


def test_split_probe_takes_text_before_object():
    assert split_probe(ITEM) == ("Ada works for", "Northwind Labs Group")


def test_multi_token_object_all_right():
    tok = word_tokenizer(SENT.split() + ["Wrong"])
    r = probe_accuracy(chain_model(tok, SENT), tok, [ITEM])
    assert r["acc"] == 1.0 and r["em"] == 1.0 and r["n"] == 1
    assert r["per_item"][0]["object_tokens"] == 3


def test_partial_credit_two_of_three():
    tok = word_tokenizer(SENT.split() + ["Wrong"])
    # "Labs" -> "Wrong": the third object token is missed, the first two are right.
    r = probe_accuracy(chain_model(tok, SENT, {"Labs": "Wrong"}), tok, [ITEM])
    assert r["acc"] == pytest.approx(2 / 3)
    assert r["em"] == 0.0
    assert r["per_item"][0]["generated"].startswith("Northwind Labs Wrong")


def test_average_over_items_not_tokens():
    """Item 1: 1 of 3 right; item 2 (one-token object): right. Mean of items = (1/3 + 1) / 2."""
    s2 = "Bo lives in Rome ."
    tok = word_tokenizer(SENT.split() + s2.split() + ["Wrong"])
    ids1, ids2 = tok(SENT)["input_ids"], tok(s2)["input_ids"]
    table = {a: b for a, b in zip(ids1 + ids2, ids1[1:] + [0] + ids2[1:])}
    w = tok.convert_tokens_to_ids
    table[w("Northwind")] = w("Wrong")  # misses "Labs"; "Group" still right (teacher forcing)
    table[w("Labs")] = w("Wrong")       # misses "Group"
    model = Bigram(len(tok), table)
    items = [ITEM, {"task_descriptive": s2, "object": "Rome"}]
    r = probe_accuracy(model, tok, items, batch_size=2)
    assert r["acc"] == pytest.approx((1 / 3 + 1.0) / 2)
    assert [x["em"] for x in r["per_item"]] == [0.0, 1.0]


def test_prefix_fn_adds_context_and_counts_prompt_tokens():
    tok = word_tokenizer(SENT.split() + ["Note", ":"])
    model = chain_model(tok, SENT)
    plain = probe_accuracy(model, tok, [ITEM])
    ctx = probe_accuracy(model, tok, [ITEM], prefix_fn=lambda it: "Note : Note")
    assert plain["prompt_tokens"] == 3 and ctx["prompt_tokens"] == 6
    assert ctx["seconds_per_query"] > 0
    assert plain["acc"] == 1.0


def test_leading_space_belongs_to_object_token():
    """Byte-level BPE: " Brazil" is one token that carries the space; it must be the object token."""
    from metacl.models.pretrain import train_tokenizer

    texts = ["Libya maintains relations with Brazil ."] * 50 + ["Brazil is big. Libya is hot."] * 5
    tok = train_tokenizer(texts, 300)
    item = {"task_descriptive": "Libya maintains relations with Brazil .", "object": "Brazil"}
    prefix, obj = split_probe(item)
    full = prefix + " " + obj
    enc = tok(full, return_offsets_mapping=True)
    pos = object_token_positions(enc["offset_mapping"], len(full) - len(obj), len(full))
    pieces = [tok.decode([enc["input_ids"][p]]) for p in pos]
    assert "".join(pieces).strip() == "Brazil"
    # A model that gets exactly these tokens right scores 1.0; one that is off on the first scores less.
    ids = enc["input_ids"]
    good = Bigram(len(tok), {a: b for a, b in zip(ids, ids[1:])})
    assert probe_accuracy(good, tok, [item])["acc"] == 1.0
    bad_table = {a: b for a, b in zip(ids, ids[1:])}
    bad_table[ids[pos[0] - 1]] = tok.pad_token_id
    bad = Bigram(len(tok), bad_table)
    expected = (len(pos) - 1) / len(pos)
    assert probe_accuracy(bad, tok, [item], exact_match=False)["acc"] == pytest.approx(expected)


def test_batching_and_left_padding_do_not_change_scores(tmp_path):
    """A real (random) tiny Llama: per-item scores are the same at batch size 1 and 3."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metacl.models.pretrain import tiny_model_for_tests

    path = tiny_model_for_tests(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    items = [
        {"task_descriptive": "Ada Quill works for Northwind Labs .", "object": "Northwind Labs"},
        {"task_descriptive": "Paris is the capital of France .", "object": "France"},
        {"task_descriptive": "The novel Silent Harbor was written by Ada Quill in 1998 .", "object": "Ada Quill"},
    ]
    a = probe_accuracy(model, tok, items, batch_size=1)
    b = probe_accuracy(model, tok, items, batch_size=3)
    assert [x["acc"] for x in a["per_item"]] == [x["acc"] for x in b["per_item"]]
    assert [x["generated"] for x in a["per_item"]] == [x["generated"] for x in b["per_item"]]
