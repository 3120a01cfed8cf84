"""Experience replay with a reservoir buffer (Rolnick et al. 2019; Chaudhry et al. 2019).

    buffer  = reservoir sample (capacity K) of the stream: old_corpus docs, then earlier tasks' docs
    batch  <- batch + m documents drawn uniformly from the buffer   (m = --replay-per-batch)

Why a reservoir: the buffer stays bounded however long the stream, and every document offered
so far is in it with the same probability K/n, so replay is an unbiased sample of the past
rather than a sample of whatever came last. Old data comes only from `ctx.old_corpus` (the
pre-training text) and `ctx.seen_docs` (earlier tasks), never from probe sets.

Hyperparameters: --replay-capacity (K), --replay-per-batch (m), --replay-old-max (how many
pre-training documents are offered to the buffer at most).
"""

from __future__ import annotations

from metacl.core.batching import concat_batches, pad_id_of as pad_id, tokenize_docs
from metacl.strategies.base import Batch, Option, Strategy, TrainContext, register
from metacl.strategies.memory import Reservoir, sample_indices


@register
class Replay(Strategy):
    name = "replay"
    needs_old_corpus = True
    description = "replay: reservoir buffer of pre-training and earlier-task documents mixed into each batch"

    def __init__(self, replay_capacity: int = 256, replay_per_batch: int = 4, replay_old_max: int = 5000):
        self.capacity = int(replay_capacity)
        self.per_batch = int(replay_per_batch)
        self.old_max = int(replay_old_max)
        self.buffer: Reservoir | None = None
        self._offered_old = False
        self._offered_seen = 0

    options = {
        "replay_capacity": Option('reservoir size K (documents)'),
        "replay_per_batch": Option('replayed documents added to each batch'),
        "replay_old_max": Option('max pre-training docs offered to the buffer'),
    }

    def before_task(self, ctx: TrainContext) -> None:
        if self.buffer is None:
            self.buffer = Reservoir(self.capacity, ctx.generator)
        if not self._offered_old and ctx.old_corpus:
            # offer a random subset (in random order) so a huge corpus costs O(old_max)
            idx = sample_indices(len(ctx.old_corpus), min(self.old_max, len(ctx.old_corpus)), ctx.generator)
            self.buffer.extend(ctx.old_corpus[i] for i in idx)
            self._offered_old = True
        # seen_docs only grows; offer what is new since the last task
        self.buffer.extend(ctx.seen_docs[self._offered_seen :])
        self._offered_seen = len(ctx.seen_docs)

    def train_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        if not self.buffer or self.per_batch <= 0:
            return batch
        docs = self.buffer.sample(self.per_batch)
        old = tokenize_docs(ctx.tokenizer, docs, ctx.max_length, batch["input_ids"].device)
        return concat_batches(batch, old, pad_id(ctx.tokenizer))
