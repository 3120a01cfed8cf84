"""`salient_span`: a control that learns only the tokens of capitalised words and numbers.

Why: a learned token weighter should beat the cheapest hand-made rule about where facts live.
Named entities and numbers carry most of the new facts of an encyclopaedic document, so "weight
1 on the tokens of capitalised words and numbers, 0 elsewhere" is the heuristic to beat (CaMeLS
compares its learned weights with salient-span masking the same way; here the spans are found
by spelling, not by a named-entity tagger, so it needs nothing but the tokenizer).

Rule, per document (every row of a training batch):
- a *word* is a run of letters and digits, possibly joined by `'`, `-` or `_` (`McArthur-Smith`,
  `O'Neil`), so quotes and punctuation around it are not part of it; it is salient when it starts
  with an upper-case letter (`Kestrel`, `McArthur`, also a sentence's first word) or holds a
  digit (`1987`, `3rd`, `B-52`);
- a token gets weight 1 when any of its non-space characters lies inside a salient word,
  else 0 (punctuation, lower-case words, special tokens, padding).

Alignment: the weights are per *token position*, the layout of `labels`, exactly like the
`oracle` and `taalm` weights: entry t weighs the loss of predicting token t from the tokens
before it. So the loss is the NLL of predicting the salient tokens themselves. A row without a
salient word contributes nothing (it is not silently trained on in full).
"""

from __future__ import annotations

import re

import torch

from metacl.strategies.base import Batch, Strategy, TrainContext, register

WORD = re.compile(r"[^\W_](?:[\w'’-]*[^\W_])?")


def salient_char_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the salient words of `text` (see the module docstring)."""
    spans = []
    for m in WORD.finditer(text):
        w = m.group()
        if w[0].isupper() or any(c.isdigit() for c in w):
            spans.append((m.start(), m.end()))
    return spans


def salient_token_mask(ids: list[int], tokenizer) -> list[int]:
    """1 at the tokens of `ids` that belong to a capitalised word or a number, else 0.

    Each token is decoded on its own and the pieces are laid end to end, so a token's
    character span is known exactly without assuming the tokenizer has offset mappings.
    Special tokens (BOS, EOS, padding) are empty pieces and never salient.
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pieces = ["" if i in special else tokenizer.decode([i]) for i in ids]
    text = "".join(pieces)
    spans = salient_char_spans(text)
    mask, pos = [], 0
    for piece in pieces:
        a = pos + (len(piece) - len(piece.lstrip()))  # a leading space is not part of the word
        b = pos + len(piece)
        mask.append(int(b > a and any(a < e and b > s for s, e in spans)))
        pos = b
    return mask


@register
class SalientSpan(Strategy):
    name = "salient_span"
    description = "control: weight 1 on the tokens of capitalised words and numbers, 0 elsewhere (salient-span masking)"

    def __init__(self, **_):
        self._cache: dict[tuple[int, ...], list[int]] = {}

    def token_weights(self, ctx: TrainContext, batch: Batch, nll: torch.Tensor) -> torch.Tensor:
        rows = []
        for ids, m in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
            key = tuple(i for i, k in zip(ids, m) if k)
            if key not in self._cache:
                self._cache[key] = salient_token_mask(list(key), ctx.tokenizer)
            mask = iter(self._cache[key])
            rows.append([next(mask) if k else 0 for k in m])  # padding (left or right) stays 0
        w = torch.tensor(rows, dtype=nll.dtype, device=nll.device)
        return w * (batch["labels"] != -100).to(nll.device, nll.dtype)
