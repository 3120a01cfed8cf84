"""Two controls for the token-weighting predictor: `oracle` (an upper reference) and `random`.

Why they exist: a TAALM number alone does not say whether the predictor learned *where* the
knowledge is. `oracle` puts weight 1 on the object tokens of each document's fact and 0
elsewhere: what a perfect "this is the new fact" detector would do. `random` keeps how much
weight the predictor spends but not where: it shuffles the predictor's own weights across each
document's tokens (same mean, same spread), or draws uniform weights with a given mean. If TAALM
beats `random` the gain comes from placement, not from a smaller effective step size.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from metacl.errors import DataError, MetaclError
from metacl.strategies.base import Batch, Option, Strategy, TrainContext, register


def read_objects(path: str) -> dict[str, str]:
    """Map document text (`evidence`) -> `object` from a LAMA-schema JSONL file."""
    p = Path(path)
    if not p.is_file():
        raise MetaclError(f"--oracle-data {p} does not exist; pass the To-Learn JSONL (e.g. WORLD/tl.jsonl)")
    out: dict[str, str] = {}
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[row["evidence"].strip()] = row["object"]
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
                raise DataError(f"{p}:{i}: needs string fields 'evidence' and 'object' ({type(e).__name__}); fix the line") from e
    return out


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
    enc = tokenizer(text, return_offsets_mapping=True)
    if enc["input_ids"] != ids[:len(enc["input_ids"])]:
        return mask
    start = 0
    while (k := text.find(obj, start)) >= 0:
        for t, (a, b) in enumerate(enc["offset_mapping"]):
            if a < k + len(obj) and b > k and b > a:
                mask[t] = 1
        start = k + len(obj)
    return mask


@register
class Oracle(Strategy):
    name = "oracle"
    description = "control: weight 1 on the object tokens of each document's fact, 0 elsewhere (needs --oracle-data)"

    def __init__(self, oracle_data: str | list[str] | None = None, **_):
        if not oracle_data:
            raise MetaclError("strategy oracle needs --oracle-data FILE (the To-Learn JSONL whose objects it marks, e.g. WORLD/tl.jsonl)")
        files = [oracle_data] if isinstance(oracle_data, str) else list(oracle_data)
        self.objects = {}
        for f in files:
            self.objects.update(read_objects(f))
        self._cache: dict[tuple, list[int]] = {}
        self.missed = 0

    options = {
        "oracle_data": Option("LAMA-schema JSONL file(s) giving each training document's object (e.g. tl.jsonl tl_val.jsonl)", nargs='+', metavar='FILE'),
    }

    def _object_for(self, text: str) -> str | None:
        text = text.strip()
        if text in self.objects:
            return self.objects[text]
        for doc, obj in self.objects.items():  # truncated rows: a prefix of a known document
            if text and doc.startswith(text) and obj in text:
                return obj
        return None

    def token_weights(self, ctx: TrainContext, batch: Batch, nll: torch.Tensor) -> torch.Tensor:
        ids_all, am = batch["input_ids"].tolist(), batch["attention_mask"].tolist()
        rows = []
        for ids, m in zip(ids_all, am):
            ids = [i for i, k in zip(ids, m) if k]
            key = tuple(ids)
            if key not in self._cache:
                text = ctx.tokenizer.decode(ids, skip_special_tokens=True)
                obj = self._object_for(text)
                mask = object_token_mask(ids, text, obj, ctx.tokenizer) if obj else [0] * len(ids)
                if not any(mask):
                    self.missed += 1
                self._cache[key] = mask
            rows.append(self._cache[key] + [0] * (len(m) - len(ids)))  # right padding
        w = torch.tensor(rows, dtype=nll.dtype, device=nll.device)
        w = w * (batch["labels"] != -100).to(nll.dtype).to(nll.device)
        # a row without a known object (e.g. replayed old text) keeps the plain label mask
        empty = w.sum(1) == 0
        if empty.any():
            w[empty] = (batch["labels"][empty] != -100).to(nll.dtype).to(nll.device)
        return w

    def state_dict(self) -> dict:  # the mask cache is rebuilt on demand; only the counter is reported
        return {"missed": self.missed}

    def load_state_dict(self, state: dict) -> None:
        self.missed = int(state.get("missed", 0))


@register
class RandomWeights(Strategy):
    name = "random"
    description = "control: random token weights with the predictor's mean (--random-predictor) or a given mean"

    def __init__(self, random_predictor: str | None = None, random_mean: float | None = None, seed: int = 0, **_):
        if random_mean is not None and not 0.0 < random_mean <= 1.0:
            raise MetaclError(f"--random-mean {random_mean} is outside (0, 1]; pass a mean weight such as 0.3")
        self.path = random_predictor
        self.mean = 0.5 if random_mean is None else float(random_mean)
        self.seed = int(seed)
        self.predictor = None

    options = {
        "random_predictor": Option("shuffle this token weighter's weights within each document (same mean and spread)", metavar='PATH'),
        "random_mean": Option('without --random-predictor: uniform random weights with this mean', type=float),
    }

    def before_task(self, ctx: TrainContext) -> None:
        if self.path and self.predictor is None:
            from metacl.strategies.taalm import load_predictor

            self.predictor = load_predictor(self.path, ctx.tokenizer, ctx.device)

    def _gen(self, ids: list[int]) -> torch.Generator:
        """Same document -> same random weights every epoch (a fixed, not a re-drawn, control)."""
        h = hashlib.sha256((str(self.seed) + ":" + ",".join(map(str, ids))).encode()).digest()
        g = torch.Generator()
        g.manual_seed(int.from_bytes(h[:8], "little") & (2**63 - 1))
        return g

    def token_weights(self, ctx: TrainContext, batch: Batch, nll: torch.Tensor) -> torch.Tensor:
        labels_ok = (batch["labels"] != -100).cpu()
        if self.path:
            if self.predictor is None:
                self.before_task(ctx)
            from metacl.strategies.taalm import predictor_weights

            base = predictor_weights(self.predictor, batch).cpu()
        else:
            base = None
        out = torch.zeros(labels_ok.shape, dtype=torch.float32)
        for r, ids in enumerate(batch["input_ids"].tolist()):
            idx = labels_ok[r].nonzero().squeeze(1)
            if len(idx) == 0:
                continue
            g = self._gen(ids)
            if base is not None:
                vals = base[r, idx]
                out[r, idx] = vals[torch.randperm(len(idx), generator=g)]
            else:
                # uniform on the widest interval inside [0, 1] whose mean is self.mean
                lo, hi = (0.0, 2 * self.mean) if self.mean <= 0.5 else (2 * self.mean - 1.0, 1.0)
                out[r, idx] = lo + (hi - lo) * torch.rand(len(idx), generator=g)
        return out.to(nll.device, nll.dtype)
