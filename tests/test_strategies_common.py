"""Shared tiny fixtures for the strategy tests, plus tests of the shared helpers in
`metacl.strategies._importance` (reservoir, Fisher, batches).

Why a char-level tokenizer here: the strategy mechanisms only need *some* text -> ids map, and
a 64-symbol alphabet lets the model have vocab 64 (hidden 32, 2 layers) so every test runs in
milliseconds.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from metacl.core.batching import concat_batches, tokenize_docs

from metacl.engine.losses import token_nll

from metacl.strategies.anchor import QuadraticAnchor

from metacl.strategies.importance import diagonal_fisher, mean_nll

from metacl.strategies.memory import Reservoir
from metacl.strategies.base import TrainContext

ALPHABET = "\x00 abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXY0123456789."  # 64 symbols, 0 = pad


class CharTokenizer:
    """The smallest HF-like tokenizer: one id per character, id 0 = padding (also unknown)."""

    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, text, truncation=False, max_length=None, **_):
        ids = [ALPHABET.find(c) if ALPHABET.find(c) > 0 else 0 for c in text]
        if truncation and max_length:
            ids = ids[:max_length]
        return {"input_ids": ids}

    def decode(self, ids):
        return "".join(ALPHABET[i] for i in ids if i > 0)


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg)


def random_batch(B: int = 3, T: int = 12, seed: int = 0, pad_last: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if pad_last:
        mask[-1, -pad_last:] = 0
        ids[-1, -pad_last:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


OLD = ["the old corpus speaks of rivers.", "pretraining text about mountains.", "an old story of ships.",
       "more old text on forests.", "ancient words about the sea."]
NEW = ["Ada Quill works for Northwind.", "Marco Vell was born in Lisbon.", "The novel Silent Harbor is new."]


def make_ctx(model=None, train_docs=None, old_corpus=None, seen_docs=None, seed: int = 0, **kw) -> TrainContext:
    return TrainContext(model=model if model is not None else tiny_model(seed), tokenizer=CharTokenizer(),
                        device=torch.device("cpu"), train_docs=list(NEW if train_docs is None else train_docs),
                        old_corpus=list(OLD if old_corpus is None else old_corpus),
                        seen_docs=list(seen_docs or []), batch_size=2, max_length=48,
                        generator=torch.Generator().manual_seed(seed), **kw)


def loop_loss(ctx: TrainContext, strategies, batch):
    """The loss exactly as base.py's docstring says the loop builds it (for hook-level tests)."""
    for s in strategies:
        batch = s.train_batch(ctx, batch)
    out = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    from metacl.engine.losses import label_mask, nll_from_logits

    nll = nll_from_logits(out.logits, batch["labels"])
    w = label_mask(batch)
    for s in strategies:
        tw = s.token_weights(ctx, batch, nll)
        if tw is not None:
            w = w * tw
    loss = (w * nll).sum() / w.sum().clamp_min(1e-8)
    for s in strategies:
        extra = s.extra_loss(ctx, batch, out.logits)
        if extra is not None:
            loss = loss + extra
    return loss, batch


# --------------------------------------------------------------------------- helper tests

def test_reservoir_bounded_and_unbiased():
    """Every one of N streamed items should be kept with probability K/N (chi-square, fixed seed)."""
    from scipy.stats import chi2

    N, K, trials = 60, 6, 1500
    g = torch.Generator().manual_seed(1234)
    counts = torch.zeros(N)
    for _ in range(trials):
        r = Reservoir(K, g)
        r.extend(range(N))
        assert len(r) == K  # bounded
        counts[torch.tensor(r.items)] += 1
    expected = trials * K / N
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert chi2.sf(stat, N - 1) > 1e-3, f"inclusion counts not uniform: chi2={stat:.1f}"
    # the same statistic rejects a biased memory (keep the last K): the test can fail
    biased = torch.zeros(N)
    biased[-K:] = trials
    assert chi2.sf(float(((biased - expected) ** 2 / expected).sum()), N - 1) < 1e-6


def test_reservoir_sample_stays_in_buffer():
    r = Reservoir(4, torch.Generator().manual_seed(0))
    r.extend(range(100))
    assert len(r) == 4 and r.seen == 100
    assert set(r.sample(10)) <= set(r.items)


def test_diagonal_fisher_is_mean_squared_per_example_gradient():
    model = tiny_model()
    batch = random_batch(B=3, T=10)
    named = [(n, p) for n, p in model.named_parameters() if "layers.0.mlp" in n]
    fisher = diagonal_fisher(model, named, [batch])
    manual = {n: torch.zeros_like(p) for n, p in named}
    for i in range(3):
        row = {k: v[i : i + 1] for k, v in batch.items()}
        grads = torch.autograd.grad(mean_nll(model, row), [p for _, p in named])
        for (n, _), gr in zip(named, grads):
            manual[n] += gr**2 / 3
    for n in manual:
        torch.testing.assert_close(fisher[n], manual[n])
    assert all(p.grad is None for p in model.parameters())  # .grad untouched


def test_token_nll_alignment_matches_hf_loss():
    model = tiny_model()
    batch = random_batch()
    nll = token_nll(model, batch)
    assert nll.shape == batch["input_ids"].shape and torch.all(nll[:, 0] == 0)
    hf = model(**batch).loss
    torch.testing.assert_close(mean_nll(model, batch), hf)


def test_tokenize_and_concat_pad_correctly():
    tok = CharTokenizer()
    a = tokenize_docs(tok, ["abc", "abcdef"], 48)
    b = tokenize_docs(tok, ["abcdefghij"], 48)
    c = concat_batches(a, b, 0)
    assert c["input_ids"].shape == (3, 10)
    assert c["attention_mask"].sum().item() == 3 + 6 + 10
    assert (c["labels"][0, 3:] == -100).all() and c["labels"][2, 9].item() == ALPHABET.find("j")


def test_quadratic_anchor_online_update():
    model = tiny_model()
    named = [("w", torch.nn.Parameter(torch.ones(3)))]
    q = QuadraticAnchor(gamma=0.5)
    q.consolidate({"w": torch.tensor([1.0, 2.0, 3.0])}, named)
    q.consolidate({"w": torch.tensor([1.0, 1.0, 1.0])}, named)
    torch.testing.assert_close(q.fisher["w"], torch.tensor([1.5, 2.0, 2.5]))
    del model
