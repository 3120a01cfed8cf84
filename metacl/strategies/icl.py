"""In-context learning: no weight update; the TL document is put in the prompt at probe time.

    probe text = <document> "\n" <probe prefix>  ->  score the object tokens as usual

For a To-Learn item the document is its own evidence, taken from `ctx.train_docs` (the
documents the other strategies train on), so ICL sees exactly the same information. For a
Not-To-Forget item (or any item whose evidence is not a training document) the prompt holds a
TL document chosen deterministically from the item's uuid, never the item's own evidence: this
measures what a prompt full of unrelated new text does to old knowledge, and never leaks the
answer. Why report cost: the prompt grows by a whole document per query, so `probe_accuracy`
returns prompt tokens and seconds per query next to the accuracy.

No hyperparameters.
"""

from __future__ import annotations

import zlib
from typing import Any

from metacl.strategies.base import Strategy, TrainContext, register


def _field(item: Any, name: str, default: Any = None) -> Any:
    return item.get(name, default) if isinstance(item, dict) else getattr(item, name, default)


@register
class ICL(Strategy):
    name = "icl"
    description = "in-context learning: never trains; the TL evidence document is prepended to each probe"
    trains = False

    def __init__(self):
        self._docs_key: int | None = None
        self._doc_set: set[str] = set()

    def _train_doc_set(self, ctx: TrainContext) -> set[str]:
        key = id(ctx.train_docs), len(ctx.train_docs)
        if self._docs_key != key:
            self._docs_key, self._doc_set = key, set(ctx.train_docs)
        return self._doc_set

    def probe_prefix(self, ctx: TrainContext, item: Any) -> str | None:
        if not ctx.train_docs:
            return None
        evidence = _field(item, "evidence")
        if evidence in self._train_doc_set(ctx) and not _field(item, "invariant", False):
            return evidence
        # deterministic unrelated TL document (stable across runs: crc32, not Python's hash)
        key = str(_field(item, "uuid", "") or _field(item, "task_descriptive", ""))
        i = zlib.crc32(key.encode("utf-8")) % len(ctx.train_docs)
        doc = ctx.train_docs[i]
        if doc == evidence:  # never the item's own evidence
            doc = ctx.train_docs[(i + 1) % len(ctx.train_docs)] if len(ctx.train_docs) > 1 else None
        return doc
