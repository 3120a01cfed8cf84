"""Mix-review (He et al. 2021): mix pre-training text into fine-tuning, less every epoch.

    n_mix(e) = round(ratio * decay^(e-1) * B)    pre-training documents added to a batch of B
                                                 (e = 1, 2, ... the loop's epoch counter)

Why: replaying the pre-training distribution keeps the LM close to what it knew, and the decay
lets the new data dominate late in training. The mixed documents are drawn uniformly from
`ctx.old_corpus` only (the pre-training text); the strategy never sees probe sets, and with
an empty `old_corpus` it does nothing.

Hyperparameters: --mix-review-ratio (mix ratio at epoch 0), --mix-review-decay (per epoch).
"""

from __future__ import annotations

from metacl.core.batching import concat_batches, pad_id_of as pad_id, tokenize_docs
from metacl.strategies.base import Batch, Option, Strategy, TrainContext, register
from metacl.strategies.memory import sample_indices
from metacl.strategies.options import check_positive


@register
class MixReview(Strategy):
    name = "mix_review"
    needs_old_corpus = True
    description = "mix-review: add pre-training documents to each batch at a ratio decaying per epoch"

    def __init__(self, mix_review_ratio: float = 1.0, mix_review_decay: float = 0.7):
        self.ratio = check_positive(mix_review_ratio, "--mix-review-ratio")
        self.decay = check_positive(mix_review_decay, "--mix-review-decay")

    options = {
        "mix_review_ratio": Option('pre-training docs per task doc at epoch 0'),
        "mix_review_decay": Option('multiplicative decay of the ratio per epoch'),
    }

    def n_mix(self, epoch: int, batch_rows: int) -> int:
        """Documents to add in `epoch` (counted from 1, as the loop does) to a batch of `batch_rows`."""
        return int(round(self.ratio * self.decay ** max(epoch - 1, 0) * batch_rows))

    def train_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        n = self.n_mix(ctx.epoch, batch["input_ids"].shape[0])
        if n <= 0 or not ctx.old_corpus:
            return batch
        docs = [ctx.old_corpus[i] for i in sample_indices(len(ctx.old_corpus), n, ctx.generator)]
        old = tokenize_docs(ctx.tokenizer, docs, ctx.max_length, batch["input_ids"].device)
        return concat_batches(batch, old, pad_id(ctx.tokenizer))
