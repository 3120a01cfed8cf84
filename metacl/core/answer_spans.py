"""Which tokens of a tokenized document spell a given string (a fact's object, a fact sentence).

Why in `core`: the `oracle` strategies weight exactly these tokens, and token-weighter
meta-training (`metacl.meta.options`, `--span-supervision`) trains towards the same mask, so both
layers above must read one definition.
"""

from __future__ import annotations


def _find(seq: list[int], sub: list[int]) -> list[int]:
    """Start indices of every occurrence of `sub` in `seq`."""
    n = len(sub)
    return [i for i in range(len(seq) - n + 1) if n and seq[i:i + n] == sub]


def object_token_mask(ids: list[int], text: str, obj: str, tokenizer) -> list[int]:
    """1 at the tokens of `ids` that spell `obj` (every occurrence), else 0.

    First by token subsequence (with and without a leading space, which byte-level BPE folds into
    the token); if the object never appears as whole tokens, by character offsets of `text`.
    """
    mask = [0] * len(ids)
    for variant in (" " + obj, obj):
        sub = tokenizer(variant, add_special_tokens=False)["input_ids"]
        for s in _find(ids, sub):
            for j in range(s, s + len(sub)):
                mask[j] = 1
    if any(mask) or obj not in text:
        return mask
    return span_token_mask(ids, text, obj, tokenizer)  # by character offsets


def span_token_mask(ids: list[int], text: str, part: str, tokenizer) -> list[int]:
    """1 at the tokens of `ids` whose characters overlap any occurrence of `part` in `text`.

    `ids` must be `text` tokenized with special tokens (what a training window of a whole document
    is); otherwise nothing is marked and the caller falls back to plain weights.
    """
    mask = [0] * len(ids)
    enc = tokenizer(text, return_offsets_mapping=True)
    if enc["input_ids"] != ids[:len(enc["input_ids"])] or not part:
        return mask
    start = 0
    while (k := text.find(part, start)) >= 0:
        for t, (a, b) in enumerate(enc["offset_mapping"]):
            if b > a and a < k + len(part) and b > k:
                mask[t] = 1
        start = k + len(part)
    return mask
