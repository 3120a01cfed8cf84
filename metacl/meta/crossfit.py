"""Deploy cross-fitted token weighters: each document gets the weights of the fold that never saw it.

Why: see metacl.data.crossfit. A cross-fit folder holds K weighters; at deployment the runner's
batches carry only token ids, so `route(tokenizer, docs, max_length)` first cuts each training
document into the runner's own windows (`encode_docs`, the same cut `DocBatches` makes) and maps
every window to the fold whose deploy set holds its document. A row of a batch then takes the
weights of its fold's weighter. A window of no fold's document (for example an old document that
replay mixes in) gets the mean of the K weighters: none of them was trained on it.

Refused rather than guessed: using the weighter before `route`, and a window that two folds'
documents share (it could not be given a weighter that saw neither).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from metacl.core.batching import encode_docs
from metacl.data.crossfit import MANIFEST, evidence_key, read_manifest
from metacl.errors import MetaclError


def is_crossfit(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def fold_weighter_paths(path: str | os.PathLike) -> list[Path]:
    """Each fold's weighter folder, refused with the command to run when one is missing."""
    m = read_manifest(path)
    out = []
    for k, fold in enumerate(m["folds"]):
        p = Path(path) / fold["weighter"]
        if not p.exists():
            raise MetaclError(f"cross-fit fold {k} has no weighter at {p}; meta-train it first: `metacl meta-train "
                              f"token-weighting --data {Path(path) / fold['dir']} ... --out {p}`")
        out.append(p)
    return out


def check_crossfit_tokenizer(path: str | os.PathLike, base_tokenizer: Any) -> None:
    from metacl.meta.token_weighting import check_saved_weighter_tokenizer

    for p in fold_weighter_paths(path):
        check_saved_weighter_tokenizer(p, base_tokenizer)


class CrossFitWeighter(nn.Module):
    """K TokenWeighters and the fold of every training window; forward like one TokenWeighter."""

    def __init__(self, weighters: Sequence[nn.Module], deploy_keys: Sequence[set[str]]):
        super().__init__()
        if len(weighters) != len(deploy_keys) or len(weighters) < 2:
            raise MetaclError(f"a cross-fit weighter needs one weighter per fold (>= 2), got {len(weighters)} "
                              f"weighters for {len(deploy_keys)} folds")
        norms = {w.loss_norm for w in weighters}
        if len(norms) != 1:
            raise MetaclError(f"the folds' weighters were meta-trained with different inner-loss norms {sorted(norms)}; "
                              "meta-train every fold with the same flags")
        self.weighters = nn.ModuleList(weighters)
        self.loss_norm = norms.pop()
        self.deploy_keys = [set(k) for k in deploy_keys]
        self.fold_of_window: dict[tuple[int, ...], int] | None = None
        self.counts = {"routed": 0, "unrouted": 0}

    @classmethod
    def from_folder(cls, path: str | os.PathLike, base_tokenizer: Any = None,
                    device: str | torch.device = "cpu") -> "CrossFitWeighter":
        from metacl.meta.token_weighting import TokenWeighter

        m = read_manifest(path)
        ws = [TokenWeighter.from_pretrained(p, base_tokenizer=base_tokenizer, device=device)
              for p in fold_weighter_paths(path)]
        return cls(ws, [set(f["deploy_evidence_sha256"]) for f in m["folds"]]).to(device).eval()

    def route(self, tokenizer, docs: Sequence[str], max_length: int) -> dict[str, int]:
        """Map every window of `docs` (cut as the runner cuts them) to its document's fold."""
        fold_of: dict[tuple[int, ...], int] = {}
        per_fold = [0] * len(self.weighters)
        outside = 0
        for doc in docs:
            key = evidence_key(doc)
            k = next((i for i, keys in enumerate(self.deploy_keys) if key in keys), None)
            if k is None:
                outside += 1
                continue
            per_fold[k] += 1
            for w in encode_docs(tokenizer, [doc], max_length):
                t = tuple(w)
                if fold_of.get(t, k) != k:
                    raise MetaclError("two folds' documents share a token window, so no weighter is unseen by both; "
                                      "rewrite the folds with `metacl data crossfit` (same documents go to one fold)")
                fold_of[t] = k
        self.fold_of_window = fold_of
        return {"documents_per_fold": per_fold, "documents_outside_folds": outside}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.fold_of_window is None:
            raise MetaclError("a cross-fit weighter must be routed to its documents before use (route(tokenizer, docs, "
                              "max_length)); `ckl run --strategy taalm` does this itself")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ws = torch.stack([w(input_ids, attention_mask) for w in self.weighters])  # (K, B, T)
        out = ws.mean(0)
        lengths = attention_mask.sum(1).tolist()
        for r, row in enumerate(input_ids.tolist()):
            k = self.fold_of_window.get(tuple(row[: int(lengths[r])]))
            if k is None:
                self.counts["unrouted"] += 1
            else:
                out[r] = ws[k, r]
                self.counts["routed"] += 1
        return out
