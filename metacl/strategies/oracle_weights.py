"""Controls for the token-weighting predictor: two oracles (upper references) and `random`.

Why they exist: a TAALM number alone does not say whether the predictor learned *where* the
knowledge is. `oracle` (the object oracle, TAALM's) puts weight 1 on the object tokens of each
document's fact and 0 elsewhere: what a perfect "this is the new fact's answer" detector would
do. `oracle_sentence` puts weight 1 on every token of the sentence that states the fact (the
row's `fact_sentence` / `fact_span`, as world v2 writes them): a detector of *where* the fact is
that still trains on its whole wording, subject and relation included. `random` keeps how much
weight the predictor spends but not where: it shuffles the predictor's own weights across each
document's tokens (same mean, same spread), or draws uniform weights with a given mean. If TAALM
beats `random` the gain comes from placement, not from a smaller effective step size.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from metacl.core.answer_spans import object_token_mask, span_token_mask  # noqa: F401  (re-exported: experiments import them from here)
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

    def _mask(self, ids: list[int], text: str, tokenizer) -> list[int]:
        """The 0/1 weights of one document window (`ids`, decoded as `text`)."""
        obj = self._object_for(text)
        return object_token_mask(ids, text, obj, tokenizer) if obj else [0] * len(ids)

    def token_weights(self, ctx: TrainContext, batch: Batch, nll: torch.Tensor) -> torch.Tensor:
        ids_all, am = batch["input_ids"].tolist(), batch["attention_mask"].tolist()
        rows = []
        for ids, m in zip(ids_all, am):
            ids = [i for i, k in zip(ids, m) if k]
            key = tuple(ids)
            if key not in self._cache:
                mask = self._mask(ids, ctx.tokenizer.decode(ids, skip_special_tokens=True), ctx.tokenizer)
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


def read_fact_sentences(path: str) -> dict[str, tuple[str, str]]:
    """Map document text (`evidence`) -> (fact sentence, object) from a LAMA-schema JSONL file.

    The fact sentence is `fact_span` (character offsets into `evidence`) or `fact_sentence` when
    the row has one (world v2); else the probe sentence if the document contains it verbatim (world
    v1); else the document's sentence holding the object's last occurrence (official evidence).
    """
    p = Path(path)
    if not p.is_file():
        raise MetaclError(f"--oracle-data {p} does not exist; pass the To-Learn JSONL (e.g. WORLD/tl.jsonl)")
    out: dict[str, tuple[str, str]] = {}
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ev, obj = row["evidence"], row["object"]
                span = row.get("fact_span")
                if span is not None:
                    a, b = int(span[0]), int(span[1])
                    if not 0 <= a < b <= len(ev):
                        raise ValueError(f"fact_span {span} outside the evidence")
                    sent = ev[a:b]
                elif row.get("fact_sentence"):
                    sent = row["fact_sentence"]
                elif row.get("task_descriptive") and row["task_descriptive"] in ev:
                    sent = row["task_descriptive"]
                else:
                    k = ev.rfind(obj)
                    if k < 0:
                        raise ValueError("the object is not in the evidence")
                    a = max(ev.rfind(". ", 0, k) + 2, 0) if ev.rfind(". ", 0, k) >= 0 else 0
                    b = ev.find(". ", k + len(obj))
                    sent = ev[a:(b + 1 if b >= 0 else len(ev))]
                if sent not in ev:
                    raise ValueError("fact_sentence is not part of the evidence")
                out[ev.strip()] = (sent, obj)
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError) as e:
                raise DataError(f"{p}:{i}: needs string fields 'evidence' and 'object' and a fact sentence inside the "
                                f"evidence ({type(e).__name__}: {e}); fix the line") from e
    return out


@register
class OracleSentence(Oracle):
    name = "oracle_sentence"
    description = "control: weight 1 on every token of each document's fact sentence, 0 elsewhere (needs --oracle-data)"

    def __init__(self, oracle_data: str | list[str] | None = None, **_):
        if not oracle_data:
            raise MetaclError("strategy oracle_sentence needs --oracle-data FILE (the To-Learn JSONL whose fact "
                              "sentences it marks, e.g. WORLD/tl.jsonl)")
        files = [oracle_data] if isinstance(oracle_data, str) else list(oracle_data)
        self.facts: dict[str, tuple[str, str]] = {}
        for f in files:
            self.facts.update(read_fact_sentences(f))
        self.objects = {doc: obj for doc, (_, obj) in self.facts.items()}
        self._cache = {}
        self.missed = 0

    def _mask(self, ids: list[int], text: str, tokenizer) -> list[int]:
        doc = text.strip()
        fact = self.facts.get(doc)
        if fact is None:  # a truncated window: the prefix of a known document
            fact = next((v for d, v in self.facts.items() if doc and d.startswith(doc) and v[0] in doc), None)
        return span_token_mask(ids, text, fact[0], tokenizer) if fact else [0] * len(ids)


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
            self.token_weight_norm = self.predictor.loss_norm  # used as the predictor's weights are
        if self.predictor is not None:
            from metacl.strategies.taalm import route_predictor

            route_predictor(self.predictor, ctx)

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
