"""Documents → padded training batches, with a seeded shuffle per epoch.

Why windows and not truncation: an evidence document longer than `max_length` would lose its
tail, and the fact sentence may sit in that tail. Each document (`<bos> doc <eos>` when the
tokenizer has those tokens) is cut into consecutive windows of at most `max_length` tokens, so
every token is trained on. Tokenization happens once per task; each epoch only reshuffles.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from metacl.errors import MetaclError

Batch = dict[str, torch.Tensor]


def encode_docs(tokenizer, docs: Sequence[str], max_length: int) -> list[list[int]]:
    """Token windows of every document (each at least 2 tokens long, so it has a target)."""
    if max_length < 2:
        raise MetaclError(f"--max-length must be at least 2 tokens, got {max_length}; pass e.g. --max-length 256")
    eos = tokenizer.eos_token_id
    out: list[list[int]] = []
    for ids in tokenizer(list(docs), add_special_tokens=True)["input_ids"]:
        ids = list(ids) + ([eos] if eos is not None else [])
        for start in range(0, len(ids), max_length):
            piece = ids[start:start + max_length]
            if len(piece) >= 2:
                out.append(piece)
    return out


def collate(seqs: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """Right-padded `input_ids`, `attention_mask` and `labels` (-100 on padding)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def pad_id_of(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if t is not None:
            return int(t)
    return 0


class DocBatches:
    """Re-iterable batches over tokenized windows; each pass draws a new permutation from `generator`.

    Same generator seed → same order of batches in every epoch, across runs.
    """

    def __init__(self, tokenizer, docs: Sequence[str], batch_size: int, max_length: int,
                 generator: torch.Generator | None = None, shuffle: bool = True):
        if batch_size < 1:
            raise MetaclError(f"--batch-size must be a positive integer, got {batch_size}")
        self.windows = encode_docs(tokenizer, docs, max_length)
        if not self.windows:
            raise MetaclError("no training text: every document is empty after tokenization; check the evidence field")
        self.batch_size = batch_size
        self.pad_id = pad_id_of(tokenizer)
        self.generator = generator
        self.shuffle = shuffle

    def __len__(self) -> int:
        return (len(self.windows) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        order = self.epoch_order()
        for b in range(len(self)):
            yield self.batch_at(order, b)

    def epoch_order(self) -> list[int]:
        """One epoch's window order (draws from the generator, as iterating does).

        Kept apart from iteration so a checkpoint can store the order of the epoch in progress
        and a resumed run can replay its remaining batches exactly (`batch_at`).
        """
        n = len(self.windows)
        return torch.randperm(n, generator=self.generator).tolist() if self.shuffle else list(range(n))

    def batch_at(self, order: Sequence[int], b: int) -> Batch:
        """Batch number `b` (0-based) of an epoch whose window order is `order`."""
        if len(order) != len(self.windows):
            raise MetaclError(f"stored batch order has {len(order)} windows but the data has {len(self.windows)}; "
                              "the checkpoint belongs to other data: delete OUT/checkpoint or use the original data")
        s = b * self.batch_size
        return collate([self.windows[i] for i in order[s:s + self.batch_size]], self.pad_id)
