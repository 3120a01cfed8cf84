"""Defining mechanisms of the data-side baselines: replay (reservoir) and mix-review."""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_strategies_common import NEW, OLD, CharTokenizer, make_ctx, random_batch  # noqa: E402

from metacl.core.batching import tokenize_docs  # noqa: E402
from metacl.strategies.mix_review import MixReview  # noqa: E402
from metacl.strategies.replay import Replay  # noqa: E402

PROBES = ["Ada Quill works for Southwind.", "Marco Vell was born in Porto."]  # probe-set texts


def rows_as_text(batch, start):
    tok = CharTokenizer()
    return [tok.decode(r[m.bool()].tolist()) for r, m in zip(batch["input_ids"][start:], batch["attention_mask"][start:])]


def task_batch(ctx):
    return tokenize_docs(ctx.tokenizer, ctx.train_docs[:2], ctx.max_length)


def test_mix_review_draws_only_from_old_corpus_and_decays():
    ctx = make_ctx()
    ctx.scratch["probe_sets"] = PROBES  # even if probes were lying around, they must not be used
    mix = MixReview(mix_review_ratio=2.0, mix_review_decay=0.5)
    mixed_counts = []
    for epoch in range(1, 5):  # the loop counts epochs from 1
        ctx.epoch = epoch
        base = task_batch(ctx)
        out = mix.train_batch(ctx, base)
        added = rows_as_text(out, base["input_ids"].shape[0])
        mixed_counts.append(len(added))
        assert all(t in OLD for t in added), added          # only pre-training text
        assert not any(t in PROBES or t in NEW for t in added)
        torch.testing.assert_close(out["input_ids"][:2, : base["input_ids"].shape[1]], base["input_ids"])
    assert mixed_counts == [4, 2, 1, 0]  # round(2 * 0.5^e * B), B = 2


def test_mix_review_without_old_corpus_changes_nothing():
    ctx = make_ctx(old_corpus=[])
    base = task_batch(ctx)
    assert MixReview().train_batch(ctx, base) is base


def test_replay_buffer_bounded_and_only_old_or_seen_docs():
    seen_all = [f"earlier task doc {i}." for i in range(40)]
    ctx = make_ctx(seen_docs=[])
    rep = Replay(replay_capacity=8, replay_per_batch=3)
    for task in range(5):  # seen_docs grows by 8 documents per task
        ctx.seen_docs = seen_all[: 8 * task]
        rep.before_task(ctx)
        assert len(rep.buffer) <= 8
        out = rep.train_batch(ctx, task_batch(ctx))
        added = rows_as_text(out, 2)
        assert len(added) == 3
        assert all(t in OLD or t in seen_all for t in added)
    assert rep.buffer.seen == len(OLD) + 32  # every document offered exactly once


def test_replay_sample_is_unbiased_between_old_corpus_and_tasks():
    """After a long stream the buffer's share of each source matches its share of the stream."""
    old = [f"old {i}." for i in range(300)]
    seen = [f"seen {i}." for i in range(100)]
    shares = []
    for seed in range(30):
        ctx = make_ctx(old_corpus=old, seen_docs=seen, seed=seed)
        rep = Replay(replay_capacity=40)
        rep.before_task(ctx)
        shares.append(sum(t.startswith("old") for t in rep.buffer.items) / 40)
    mean = sum(shares) / len(shares)
    # expected 300/400 = 0.75; sd of the mean over 30 runs ~ 0.012
    assert abs(mean - 0.75) < 0.05, mean


def test_replay_empty_stream_is_a_no_op():
    ctx = make_ctx(old_corpus=[], seen_docs=[])
    rep = Replay()
    rep.before_task(ctx)
    b = random_batch()
    assert rep.train_batch(ctx, b) is b
