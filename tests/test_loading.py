"""`metacl.models.loading`: any local causal LM by path, one-line errors for the usual mistakes."""

import json
import shutil

import pytest
import torch

from metacl.errors import MetaclError
from metacl.models import load_model_and_tokenizer, tiny_model_for_tests


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_for_tests(tmp_path_factory.mktemp("tiny"))


def test_tiny_model_loads_and_runs(tiny):
    model, tok = load_model_and_tokenizer(tiny, device="cpu")
    assert not model.training
    enc = tok(["Ada Quill works for Northwind Labs.", "Paris"], padding=True, return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == tok.bos_token_id  # Llama-like: <s> first
    out = model(**enc)
    assert out.logits.shape[:2] == enc["input_ids"].shape
    assert out.logits.shape[-1] == len(tok)
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == "Ada Quill works for Northwind Labs."


def test_eager_attention_and_dtype(tiny):
    model, _ = load_model_and_tokenizer(tiny, device="cpu", dtype="float32", attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype == torch.float32


def test_missing_path(tmp_path):
    with pytest.raises(MetaclError, match="does not exist"):
        load_model_and_tokenizer(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    with pytest.raises(MetaclError, match="no config.json"):
        load_model_and_tokenizer(tmp_path)


def test_not_a_causal_lm(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(MetaclError, match="not a causal LM") as e:
        load_model_and_tokenizer(tmp_path)
    assert "\n" not in str(e.value)


def test_no_tokenizer(tiny, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny / f, d / f)
    with pytest.raises(MetaclError, match="no usable tokenizer") as e:
        load_model_and_tokenizer(d)
    assert "\n" not in str(e.value)


def test_pad_token_set_when_missing(tiny, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("pad_token")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    model, tok = load_model_and_tokenizer(d, device="cpu")
    assert tok.pad_token == tok.eos_token
    assert model.config.pad_token_id is not None


def test_any_causal_lm_gpt2_without_pad(tmp_path):
    """Not only metacl's own Llamas: a GPT-2 with a pad-less tokenizer loads and gets a pad token."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from metacl.models.pretrain import train_tokenizer

    tok = train_tokenizer(["a small corpus for a gpt2 tokenizer", "with two lines"], vocab_size=280)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=64)).save_pretrained(tmp_path)
    model, tok2 = load_model_and_tokenizer(tmp_path, device="cpu")
    assert model.config.model_type == "gpt2" and tok2.pad_token is not None
    enc = tok2(["with two", "a"], padding=True, return_tensors="pt")
    assert model(**enc).logits.shape[:2] == enc["input_ids"].shape
