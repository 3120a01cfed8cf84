"""What a token weighter does to a document: its weights as text, a shaded PNG and an HTML page.

Why: before deploying a weighter (or while debugging one that converged to uniform weights)
one wants to *see* where it puts the weight: are the object tokens of the fact heavier than the
filler? `metacl weights show` calls `show_documents`; the pictures are drawn by
`metacl.meta.visualize`.

Tokenization is the CKL loop's (`<bos> document <eos>`, first `max_length` tokens), so the
weights shown are the ones `--strategy taalm` would train with. BOS is dropped (nothing predicts
it). For LAMA-schema rows the object's tokens are found by character offsets, as the probe scorer
finds them, and the mean weight on them vs on the other tokens is reported (the "object/other
ratio").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch


@dataclass
class ShownDocument:
    """One document with its per-token weights (BOS dropped)."""

    name: str
    tokens: list[str]
    weights: list[float]
    object: str | None = None
    object_mask: list[int] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        w = self.weights
        out: dict[str, Any] = {"n_tokens": len(w), "mean": sum(w) / max(1, len(w)),
                               "min": min(w, default=0.0), "max": max(w, default=0.0)}
        if self.object is not None and any(self.object_mask):
            obj = [x for x, m in zip(w, self.object_mask) if m]
            other = [x for x, m in zip(w, self.object_mask) if not m]
            out["object_mean"] = sum(obj) / len(obj)
            out["other_mean"] = sum(other) / max(1, len(other))
            out["object_other_ratio"] = out["object_mean"] / max(out["other_mean"], 1e-12)
        return out


def document_weights(weighter, tokenizer, text: str, max_length: int, obj: str | None = None,
                     name: str = "") -> ShownDocument:
    """Weights of one document as the CKL loop tokenizes it (first window)."""
    from metacl.core.batching import encode_docs
    from metacl.meta.visualize import token_strings

    ids = encode_docs(tokenizer, [text], max_length)[0]
    dev = next(weighter.parameters()).device
    with torch.no_grad():
        w = weighter(torch.tensor([ids], device=dev), torch.ones(1, len(ids), dtype=torch.long, device=dev))[0]
    mask = object_mask(tokenizer, ids, text, obj)[1:] if obj is not None else []
    return ShownDocument(name, token_strings(tokenizer, ids)[1:], [float(x) for x in w.float().cpu()[1:]], obj, mask)


def object_mask(tokenizer, ids: list[int], text: str, obj: str) -> list[int]:
    """1 at the tokens of `ids` that overlap an occurrence of `obj` in `text` (by character offsets).

    The probe scorer's rule (`object_token_positions`), applied to every occurrence; all 0 if the
    tokenizer gives no offsets or tokenizes `text` differently from `ids`.
    """
    from metacl.core.probes import object_token_positions

    mask = [0] * len(ids)
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return mask
    if list(enc["input_ids"]) != list(ids[:len(enc["input_ids"])]):
        return mask
    start = text.find(obj)
    while obj and start >= 0:
        for t in object_token_positions(enc["offset_mapping"], start, start + len(obj)):
            mask[t] = 1
        start = text.find(obj, start + len(obj))
    return mask


def format_document(doc: ShownDocument) -> str:
    """Plain-text view: a summary line, then every token followed by its weight in brackets."""
    s = doc.stats()
    head = f"{doc.name}: {s['n_tokens']} tokens, weight mean {s['mean']:.3f} (min {s['min']:.3f}, max {s['max']:.3f})"
    if "object_mean" in s:
        head += (f"; object {doc.object!r}: mean {s['object_mean']:.3f} vs other {s['other_mean']:.3f} "
                 f"(ratio {s['object_other_ratio']:.3f})")
    body = "".join(f"{t}[{w:.2f}]" for t, w in zip(doc.tokens, doc.weights))
    return head + "\n" + body.replace("\n", " ").strip()


def documents_from_text(path: str | Path) -> list[tuple[str, str, str | None]]:
    """A plain text file is one document: [(name, text, None)]."""
    from metacl.errors import MetaclError

    p = Path(path)
    if not p.is_file():
        raise MetaclError(f"--text {p} does not exist; pass a text file holding the document")
    text = p.read_text(encoding="utf-8", errors="replace").strip()
    if not text:
        raise MetaclError(f"--text {p} is empty; put the document's text in it")
    return [(p.stem, text, None)]


def documents_from_data(path: str | Path, items: int, start: int = 0) -> list[tuple[str, str, str | None]]:
    """Rows `start .. start+items` of a LAMA-schema JSONL file: (uuid, evidence, object)."""
    from metacl.data.lama import load_lama_jsonl
    from metacl.errors import MetaclError

    p = Path(path)
    if not p.is_file():
        raise MetaclError(f"--data {p} does not exist; pass a LAMA-schema JSONL file (e.g. WORLD/tl.jsonl)")
    rows = load_lama_jsonl(p)
    if start >= len(rows):
        raise MetaclError(f"--start {start} is past the end of {p} ({len(rows)} rows); pass a smaller --start")
    return [(it.uuid, it.evidence, it.object) for it in rows[start:start + items]]


def show_documents(weighter, tokenizer, docs: Sequence[tuple[str, str, str | None]], out_dir: str | Path,
                   max_length: int = 256) -> tuple[list[ShownDocument], list[Path]]:
    """Weights of every document; writes OUT/<i>_<name>.png and .html and OUT/weights.json.

    Everything is computed before anything is written, so a failure leaves no half-written folder.
    """
    from metacl.meta.visualize import render_html, render_png
    from metacl.utils import write_json_atomic

    shown = [document_weights(weighter, tokenizer, text, max_length, obj, name) for name, text, obj in docs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, d in enumerate(shown):
        stem = f"{i:03d}_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in d.name)[:40]
        title = f"{d.name}" + (f" (object: {d.object})" if d.object else "")
        written.append(render_png(d.tokens, d.weights, out / f"{stem}.png", title))
        html_path = out / f"{stem}.html"
        tmp = html_path.with_name(f".{html_path.name}.tmp")
        tmp.write_text(render_html(d.tokens, d.weights, title), encoding="utf-8")
        tmp.replace(html_path)
        written.append(html_path)
    write_json_atomic(out / "weights.json", [{"name": d.name, "object": d.object, "tokens": d.tokens,
                                               "weights": d.weights, "object_mask": d.object_mask, **d.stats()}
                                              for d in shown])
    written.append(out / "weights.json")
    return shown, written


def load_for_show(predictor: str | Path, device: str = "cpu"):
    """The saved weighter and its own tokenizer (a weighter saved without one is refused)."""
    from metacl.errors import MetaclError
    from metacl.meta.token_weighting import TokenWeighter

    p = Path(predictor)
    if not p.exists():
        raise MetaclError(f"--predictor {p} does not exist; pass the --out folder of "
                          "`metacl meta-train token-weighting` (or its best/ or last/ subfolder)")
    tw = TokenWeighter.from_pretrained(p, device=device)
    if tw.tokenizer is None:
        raise MetaclError(f"--predictor {p} holds no tokenizer; re-save the weighter with its tokenizer")
    return tw, tw.tokenizer

