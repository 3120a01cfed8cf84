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

Batch = dict[str, torch.Tensor]  # input_ids, attention_mask, labels (-100 = ignored), all (B, T)


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


def collate(seqs: Sequence[Sequence[int]], pad_id: int, labels: Sequence[Sequence[int]] | None = None,
            length: int | None = None) -> Batch:
    """Right-padded `input_ids`, `attention_mask` and `labels` (-100 on padding).

    The one right-padding in metacl. `labels` (one list per row, e.g. -100 outside a probe's
    object tokens) replaces the default labels = inputs. `length`: pad to at least this many
    columns (static shapes for a compiled step; causal outputs and losses do not change).
    """
    T = max(max(len(s) for s in seqs), length or 0)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    if labels is None:
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    lab = torch.full((len(seqs), T), -100, dtype=torch.long)
    for i, l in enumerate(labels):
        lab[i, : len(l)] = torch.as_tensor(list(l), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def pad_id_of(tokenizer) -> int:
    """The id used for padding: pad, else eos, else 0 (the mask makes the choice irrelevant)."""
    for attr in ("pad_token_id", "eos_token_id"):
        t = getattr(tokenizer, attr, None)
        if t is not None:
            return int(t)
    return 0


def tokenize_docs(tokenizer, texts: Sequence[str], max_length: int, device: torch.device | str = "cpu") -> Batch:
    """Tokenize documents (each truncated to `max_length`) into one right-padded causal-LM batch."""
    pid = pad_id_of(tokenizer)
    rows = []
    for t in texts:
        ids = tokenizer(t, truncation=True, max_length=max_length)["input_ids"]
        rows.append(list(ids)[:max_length] or [pid])
    return {k: v.to(device) for k, v in collate(rows, pid).items()}


def concat_batches(a: Batch, b: Batch, pad: int) -> Batch:
    """Stack two batches row-wise, right-padding the shorter one (mask 0, label -100)."""
    import torch.nn.functional as F

    T = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    fill = {"input_ids": pad, "attention_mask": 0, "labels": -100}
    out = dict(a)
    for k, v in fill.items():
        x, y = a[k], b[k].to(a[k].device)
        x = x if x.shape[1] >= T else F.pad(x, (0, T - x.shape[1]), value=v)
        y = y if y.shape[1] >= T else F.pad(y, (0, T - y.shape[1]), value=v)
        out[k] = torch.cat([x, y], dim=0)
    return out


def doc_batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int, device) -> list[Batch]:
    """`tokenize_docs` over consecutive groups of `batch_size` documents."""
    return [tokenize_docs(tokenizer, texts[i : i + batch_size], max_length, device) for i in range(0, len(texts), batch_size)]


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
