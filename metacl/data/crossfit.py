"""Cross-fitted folds for meta-training on the very distribution a run learns, without leaking.

Why: a token weighter has to know what a probe will ask about a document. On the official
LAMA-ckl files no data outside the 500 To-Learn items shares their relations (genre, diplomatic
relation, occupation, ...), and a weighter meta-trained on the invariant relations does not
transfer to them (docs/results/taalm_v2.md: closure -1.25). TAALM meta-trains on a separate set
of the same relations, which we do not have. K-fold cross-fitting is the honest substitute:

- the items are dealt into K folds; fold k's weighter is meta-trained on the items of the other
  folds only, and is the only weighter used on fold k's documents at deployment;
- so no document is ever weighted by a weighter that saw that document or its probe, while every
  weighter has seen facts of the same relations (what TAALM's separate set gives it);
- items with the same evidence text go to the same fold (a document is never on both sides), and
  each relation is dealt round-robin over the folds (every weighter sees every relation), in an
  order fixed by sha256(seed, uuid), whatever the file order.

What it cannot rule out, said where results are reported: a weighter has seen which objects the
*other* folds' probes ask for, so when a fold-k document mentions another fold's answer, the
weighter may favour it. That is knowledge of the relation's common answers, the same a separate
meta-training set of these relations would give.

    meta = write_crossfit(load_lama_jsonl("variant.jsonl"), "runs/official_crossfit", folds=2)
    # then: meta-train one weighter per fold into OUT/fold_k/weighter, and run
    # `metacl ckl run --strategy taalm --taalm-predictor OUT` (metacl.meta.crossfit routes the folds)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from metacl.errors import MetaclError
from metacl.utils import write_json_atomic

MANIFEST = "crossfit.json"
WEIGHTER_DIR = "weighter"  # OUT/fold_k/weighter: where each fold's meta-training writes (its --out)


def evidence_key(text: str) -> str:
    """The identity of a document across files: sha256 of its stripped text."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"crossfit/{seed}/{key}".encode("utf-8")).hexdigest()


def crossfit_folds(items: Sequence, folds: int = 2, seed: int = 0) -> list[list]:
    """Deal `items` into `folds` lists: same evidence -> same fold, each relation round-robin."""
    if folds < 2:
        raise MetaclError(f"--folds {folds}: cross-fitting needs at least 2 folds (each weighter is trained on the others)")
    groups: dict[str, list] = defaultdict(list)  # one group per distinct document
    for it in items:
        groups[evidence_key(it.evidence)].append(it)
    if len(groups) < folds:
        raise MetaclError(f"{len(groups)} distinct documents cannot fill {folds} folds; pass fewer --folds")
    by_relation: dict[str, list[str]] = defaultdict(list)
    for key, group in groups.items():
        by_relation[min(it.relation_code for it in group)].append(key)
    out: list[list] = [[] for _ in range(folds)]
    turn = 0  # continue the round-robin across relations, so small relations do not all start at fold 0
    for rel in sorted(by_relation):
        for key in sorted(by_relation[rel], key=lambda k: _rank(seed, k)):
            out[turn % folds].extend(groups[key])
            turn += 1
    return out


def _write_jsonl(path: Path, items: Sequence) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps(it.to_row(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_crossfit(items: Sequence, out_dir: str | os.PathLike, folds: int = 2, seed: int = 0,
                   val_fraction: float = 0.1, source: str | None = None) -> dict:
    """Write OUT/crossfit.json and, per fold k, OUT/fold_k/{meta_train,meta_val,deploy}.jsonl.

    meta_train + meta_val = the other folds' items (meta_val: `val_fraction` of their documents by
    hash, for meta-validation); deploy = fold k's own items, the only documents fold k's weighter
    weights. Returns the manifest.
    """
    if not 0.0 < val_fraction < 1.0:
        raise MetaclError(f"--val-fraction {val_fraction} must lie strictly between 0 and 1; pass e.g. 0.1")
    dealt = crossfit_folds(items, folds, seed)
    out = Path(out_dir)
    manifest: dict = {"kind": "metacl crossfit", "version": 1, "folds": [], "seed": seed, "val_fraction": val_fraction,
                      "source": source, "items": len(items)}
    files: dict[Path, list] = {}
    for k, own in enumerate(dealt):
        rest = [it for j, f in enumerate(dealt) if j != k for it in f]
        rank = {evidence_key(it.evidence): int(_rank(seed + 1, evidence_key(it.evidence))[:8], 16) / 16**8 for it in rest}
        is_val = {key: r < val_fraction for key, r in rank.items()}
        if len(rank) >= 2 and not any(is_val.values()):  # few documents: still one on each side
            is_val[min(rank, key=rank.get)] = True
        if len(rank) >= 2 and all(is_val.values()):
            is_val[max(rank, key=rank.get)] = False
        train = [it for it in rest if not is_val[evidence_key(it.evidence)]]
        val = [it for it in rest if is_val[evidence_key(it.evidence)]]
        if not train or not val:
            raise MetaclError(f"fold {k}: {len(train)} meta-train and {len(val)} meta-val items; pass more items or "
                              "another --val-fraction")
        d = out / f"fold_{k}"
        files.update({d / "meta_train.jsonl": train, d / "meta_val.jsonl": val, d / "deploy.jsonl": own})
        manifest["folds"].append({
            "dir": f"fold_{k}", "weighter": f"fold_{k}/{WEIGHTER_DIR}",
            "counts": {"meta_train": len(train), "meta_val": len(val), "deploy": len(own)},
            "relations": {r: sum(it.relation_code == r for it in own) for r in sorted({it.relation_code for it in own})},
            "deploy_evidence_sha256": sorted({evidence_key(it.evidence) for it in own}),
        })
    old = out / MANIFEST
    if old.is_file():  # weighters may already be trained on these folds: never re-deal under them
        try:
            same = json.loads(old.read_text())["folds"] == manifest["folds"]
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        if not same:
            raise MetaclError(f"{out} already holds cross-fit folds dealt differently (other data, --folds, --seed or "
                              "--val-fraction); choose a new --out (its weighters belong to the old folds)")
    for path, rows in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_jsonl(path, rows)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a cross-fit folder, checked (one clear error if it is not one)."""
    f = Path(path) / MANIFEST
    try:
        m = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise MetaclError(f"{f} is missing or not JSON ({type(e).__name__}); pass a folder written by "
                          "`metacl data crossfit`") from e
    if not isinstance(m, dict) or m.get("kind") != "metacl crossfit" or not m.get("folds"):
        raise MetaclError(f"{f} is not a metacl cross-fit manifest; pass a folder written by `metacl data crossfit`")
    seen: set[str] = set()
    for fold in m["folds"]:
        mine = set(fold["deploy_evidence_sha256"])
        if mine & seen:
            raise MetaclError(f"{f}: a document is in two folds' deploy sets; rewrite the folder with `metacl data crossfit`")
        seen |= mine
    return m
