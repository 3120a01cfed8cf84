"""Probe metrics for continual knowledge learning: does the model *know* a fact?

A probe is a sentence like "Libya maintains diplomatic relations with Brazil ." whose object
("Brazil") the model must produce after the prefix ("Libya maintains diplomatic relations with").

Two scores, both per item and averaged over items:

- `acc` (the official LAMA-ckl metric, teacher-forced): the probe `prefix + " " + object` is
  tokenized *once*; the object's tokens are found with the tokenizer's offset mapping (any token
  whose character span overlaps the object). At each object token we ask whether the argmax of
  the previous position's logits is that token. The item's score is the fraction right (partial
  credit for multi-token objects). Why one tokenization and offsets rather than tokenizing the
  object alone: with BPE the object's first token usually carries the leading space (" Brazil"),
  and tokenizing "Brazil" separately would give different ids than the model ever sees in text.
- `em` (exact match): greedy generation from the prefix; the decoded continuation, stripped,
  must start with the object. Stricter and closer to how a user would query the model.

`prefix_fn(item)` may return text put before each probe (in-context learning). Then the probe
is longer and the cost per query matters, so the result also reports the mean prompt length
in tokens and the seconds per query.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from metacl.core.batching import collate, pad_id_of
from metacl.errors import DataError

__all__ = ["probe_accuracy", "probe_split", "split_probe", "item_field", "object_token_positions"]


def item_field(item: Any, name: str, default: Any = None) -> Any:
    """Read a field from a `LamaItem`-like object or a plain dict (tests and JSON rows)."""
    if isinstance(item, dict):
        return item.get(name, default)
    return getattr(item, name, default)


def probe_split(item: Any) -> tuple[str, str]:
    """Split a `LamaItem`'s probe sentence into (text before the object, the object).

    The last occurrence is used because the subject may contain the object's words earlier in
    the sentence. The prefix is stripped of trailing spaces; the scorer re-inserts one space
    before the object, so tokenizers that fold the space into the first object token are handled.
    """
    text, obj = item.task_descriptive, item.object
    i = text.rfind(obj)
    if i < 0:
        raise DataError(f"item {item.uuid}: field 'task_descriptive' does not contain the object {obj!r}; "
                        "the probe sentence must state the object verbatim")
    return text[:i].rstrip(), obj


def split_probe(item: Any) -> tuple[str, str]:
    """(prefix, object) of a probe: the text of `task_descriptive` before the object.

    A `LamaItem` goes through `probe_split` (which refuses a sentence without its object); a
    plain dict (tests, JSON rows) follows the same rule leniently (object stripped; no
    occurrence -> the whole sentence is the prefix).
    """
    if not isinstance(item, dict):
        return probe_split(item)
    text = str(item_field(item, "task_descriptive", "") or "")
    obj = str(item_field(item, "object", "") or "").strip()
    i = text.rfind(obj) if obj else -1
    prefix = text[:i] if i >= 0 else text
    return prefix.rstrip(), obj


def object_token_positions(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of tokens whose character span [s, e) overlaps the object span [start, end).

    Special tokens have empty spans (0, 0) and never overlap. A lone space token just before the
    object does not overlap it either: the space belongs to the prefix.
    """
    return [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]


def _compose(context: str | None, prefix: str) -> str:
    return f"{context}\n{prefix}" if context else prefix


@torch.no_grad()
def probe_accuracy(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[Any],
    batch_size: int = 32,
    prefix_fn: Callable[[Any], str | None] | None = None,
    device: torch.device | str | None = None,
    exact_match: bool = True,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Score `items` (LamaItem or dicts with task_descriptive/object) on `model`.

    Returns `dict(acc, em, n, per_item, prompt_tokens, seconds_per_query)`; `em` is None when
    `exact_match=False`. The model is put in eval mode for the call and restored afterwards.
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    was_training = model.training
    model.eval()
    pad_id = pad_id_of(tokenizer)
    t0 = time.perf_counter()

    per_item: list[dict[str, Any]] = []
    prompt_tokens: list[int] = []
    try:
        for b0 in range(0, len(items), batch_size):
            chunk = items[b0:b0 + batch_size]
            prefixes, objects, contexts = [], [], []
            for it in chunk:
                p, o = split_probe(it)
                prefixes.append(p)
                objects.append(o)
                contexts.append(prefix_fn(it) if prefix_fn is not None else None)

            # ---- teacher-forced accuracy: one tokenization of the full probe -------------
            fulls, spans = [], []
            for ctx, p, o in zip(contexts, prefixes, objects):
                head = _compose(ctx, p)
                full = f"{head} {o}" if head else o
                fulls.append(full)
                spans.append((len(full) - len(o), len(full)))
            enc = tokenizer(fulls, return_offsets_mapping=True, add_special_tokens=True)
            seqs = enc["input_ids"]
            padded = collate(seqs, pad_id)
            ids, mask = padded["input_ids"], padded["attention_mask"]
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            pred = logits.argmax(-1).cpu()  # pred[:, t] is the guess for token t + 1

            n_obj_tokens = []
            for i, (it, (s, e)) in enumerate(zip(chunk, spans)):
                pos = [t for t in object_token_positions(enc["offset_mapping"][i], s, e) if t >= 1]
                right = [bool(pred[i, t - 1] == ids[i, t]) for t in pos]
                n_obj_tokens.append(len(pos))
                head_len = pos[0] if pos else len(seqs[i])
                prompt_tokens.append(head_len)
                per_item.append({
                    "uuid": item_field(it, "uuid"),
                    "object": objects[i],
                    "acc": (sum(right) / len(right)) if right else 0.0,
                    "object_tokens": len(pos),
                })

            # ---- exact match: greedy continuation of the prefix ---------------------------
            if exact_match:
                heads = [_compose(c, p) for c, p in zip(contexts, prefixes)]
                # Each item may generate its object length + 2 tokens (room for a different
                # tokenization of the same text), independent of what else is in the batch.
                limits = [max_new_tokens or (k + 2) for k in n_obj_tokens]
                gens = _greedy(model, tokenizer, heads, limits, pad_id, device)
                for j, (g, o) in enumerate(zip(gens, objects)):
                    per_item[b0 + j]["generated"] = g
                    per_item[b0 + j]["em"] = float(bool(o) and g.strip().startswith(o))
    finally:
        model.train(was_training)

    n = len(per_item)
    seconds = time.perf_counter() - t0
    return {
        "acc": sum(r["acc"] for r in per_item) / n if n else 0.0,
        "em": (sum(r["em"] for r in per_item) / n if n else 0.0) if exact_match else None,
        "n": n,
        "per_item": per_item,
        "prompt_tokens": sum(prompt_tokens) / n if n else 0.0,
        "seconds_per_query": seconds / n if n else 0.0,
    }


def _greedy(model, tokenizer, heads: list[str], limits: list[int], pad_id: int, device) -> list[str]:
    """Greedy decoding with an explicit loop and left padding.

    Why not `model.generate`: its defaults (sampling, length, cache classes) differ between
    transformers versions and between a base model and a PEFT wrapper; a 10-line argmax loop
    behaves the same everywhere. Position ids are derived from the attention mask so that left
    padding does not shift the real tokens' positions.
    """
    enc = tokenizer(heads, add_special_tokens=True)["input_ids"]
    T = max(len(s) for s in enc)
    ids = torch.full((len(enc), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(enc), T), dtype=torch.long)
    for i, s in enumerate(enc):
        if s:
            ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = 1
    ids, mask = ids.to(device), mask.to(device)
    out = []
    eos = tokenizer.eos_token_id
    for _ in range(max(limits)):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        nxt = logits.argmax(-1)
        out.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], dim=1)
    gen = torch.stack(out, dim=1).cpu().tolist() if out else [[] for _ in enc]
    texts = []
    for row, limit in zip(gen, limits):
        row = row[:limit]
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts
