"""`metacl.models.pretrain`: tokenizer + Llama from scratch, saved so HF Auto* classes reload it."""

import json
import time

import pytest
import torch

from metacl.cli.main import main
from metacl.errors import DataError, MetaclError
from metacl.data.corpus import read_corpus
from metacl.models.pretrain import (PRESETS, _epoch_batches, _windows, pretrain,
                                    tiny_model_for_tests, train_tokenizer)

FACTS = [f"{n} works for {o}." for n, o in [("Orla Venn", "Kettering Holdings"), ("Ilse Marr", "Dunmore Labs"),
                                             ("Tomas Quell", "Arden Systems"), ("Ada Brisk", "Halloway Works")]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "plain.txt").write_text("\n".join(FACTS * 3) + "\n\n")
    with open(d / "rows.jsonl", "w") as f:
        for t in FACTS:
            f.write(json.dumps({"evidence": t}) + "\n")
            f.write(json.dumps({"text": t.upper(), "evidence": "ignored"}) + "\n")
    return d


def test_read_corpus_fields_and_errors(corpus, tmp_path):
    docs = read_corpus([corpus / "plain.txt", corpus / "rows.jsonl"])
    assert len(docs) == 12 + 8 and docs[12] == FACTS[0] and docs[13] == FACTS[0].upper()  # text wins
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"title": "no text"}\n')
    with pytest.raises(DataError, match=f"{bad}:2: field 'text'"):
        read_corpus([bad])
    bad.write_text('{"text": "fine"}\n{oops\n')
    with pytest.raises(DataError, match=f"{bad}:2: malformed JSON"):
        read_corpus([bad])
    with pytest.raises(MetaclError, match="does not exist"):
        read_corpus([tmp_path / "missing.txt"])


def test_tokenizer_bytes_bos_and_leading_space():
    tok = train_tokenizer(FACTS * 5, vocab_size=300)
    ids = tok("Orla Venn works for Kettering Holdings.")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Orla Venn works for Kettering Holdings."
    # Byte-level: any text encodes; " Holdings" and "Holdings" are different tokens.
    assert tok.decode(tok("naïve 東京")["input_ids"], skip_special_tokens=True) == "naïve 東京"
    assert tok(" Holdings", add_special_tokens=False)["input_ids"] != tok("Holdings", add_special_tokens=False)["input_ids"]


def test_long_documents_become_windows_and_batches_cover_epoch():
    tok = train_tokenizer(FACTS * 5, vocab_size=300)
    seqs = _windows([" ".join(FACTS * 10), FACTS[0]], tok, block_size=16)
    assert len(seqs) > 3 and all(len(s) <= 16 for s in seqs)
    lengths = [len(s) for s in seqs]
    batches = _epoch_batches(lengths, 40, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(len(seqs)))  # every window once
    assert all(len(b) * max(lengths[i] for i in b) <= 40 or len(b) == 1 for b in batches)


def test_pretrain_tiny_learns_and_reloads(corpus, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "lm"
    s = pretrain([corpus / "plain.txt"], "tiny", out, seed=0, steps=25, lr=1e-2, device="cpu")
    assert s["parameters"] > 0 and s["preset"]["steps"] == 25
    log = [json.loads(l) for l in (out / "pretrain_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 24 and log[-1]["loss"] < 0.7 * log[0]["loss"]
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    enc = tok(FACTS[0], return_tensors="pt")
    with torch.no_grad():
        loss = model(**enc, labels=enc["input_ids"]).loss.item()
    assert loss < log[0]["loss"]  # the saved weights are the trained ones
    assert json.loads((out / "pretrain.json").read_text())["size"] == "tiny"


def test_pretrain_is_seeded(corpus, tmp_path):
    a = pretrain([corpus / "plain.txt"], "tiny", tmp_path / "a", seed=1, steps=3, device="cpu")
    b = pretrain([corpus / "plain.txt"], "tiny", tmp_path / "b", seed=1, steps=3, device="cpu")
    assert a["final_loss"] == b["final_loss"]


def test_pretrain_errors(corpus, tmp_path):
    with pytest.raises(MetaclError, match="unknown --size"):
        pretrain([corpus / "plain.txt"], "huge", tmp_path)
    with pytest.raises(MetaclError, match="positive"):
        pretrain([corpus / "plain.txt"], "tiny", tmp_path, steps=0)
    with pytest.raises(MetaclError, match="--epochs"):
        pretrain([corpus / "plain.txt"], "tiny", tmp_path, epochs=0)
    s = pretrain([corpus / "plain.txt"], "tiny", tmp_path / "e", epochs=2, device="cpu")
    assert s["epochs"] == 2  # steps were set to exactly two passes
    assert set(PRESETS) == {"tiny", "small", "base"}


def test_cli_pretrain(corpus, tmp_path, capsys):
    rc = main(["pretrain", "--corpus", str(corpus / "rows.jsonl"), "--size", "tiny", "--steps", "2",
               "--out", str(tmp_path / "m")])
    assert rc == 0 and (tmp_path / "m" / "config.json").is_file()
    assert "pretrained tiny LM" in capsys.readouterr().out
    assert main(["pretrain", "--corpus", str(tmp_path / "nope.txt"), "--size", "tiny", "--out", str(tmp_path / "x")]) == 2


def test_tiny_model_for_tests_is_fast(tmp_path):
    from metacl.models import load_model_and_tokenizer

    t = time.perf_counter()
    path = tiny_model_for_tests(tmp_path / "t", texts=["Extra words for the vocabulary."])
    model, tok = load_model_and_tokenizer(path, device="cpu")
    assert time.perf_counter() - t < 5
    assert sum(p.numel() for p in model.parameters()) < 100_000
    assert model(**tok("Extra words", return_tensors="pt")).logits.shape[-1] == len(tok)


def test_same_command_twice_gives_the_same_weights_hash(corpus, tmp_path):
    """pretrain.json records what rebuilds the model; the same command twice gives the same weights."""
    from metacl.models.loading import load_model_and_tokenizer
    from metacl.models.pretrain import corpus_hash, weights_hash

    args = ["pretrain", "--corpus", str(corpus / "plain.txt"), "--size", "tiny", "--steps", "4", "--seed", "2",
            "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "pretrain.json").read_text()) for d in ("a", "b"))
    assert a["weights_sha256"] == b["weights_sha256"] and len(a["weights_sha256"]) == 64
    assert a["corpus_sha256"] == corpus_hash([corpus / "plain.txt"]) and a["seed"] == 2
    assert a["config"]["hidden_size"] == PRESETS["tiny"].hidden_size and a["parameters"] > 0
    assert a["command"].startswith("metacl pretrain --corpus") and "--size tiny --seed 2 --steps 4" in a["command"]
    model, _ = load_model_and_tokenizer(tmp_path / "a")
    assert weights_hash(model) == a["weights_sha256"]  # the hash is of the saved weights
    assert main(args + ["--seed", "3", "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "pretrain.json").read_text())["weights_sha256"] != a["weights_sha256"]


def test_every_preset_has_a_512_token_context():
    assert all(p.block_size >= 512 for p in PRESETS.values())
