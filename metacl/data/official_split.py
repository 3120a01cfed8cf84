"""An official meta-training split: (document, probe) pairs from the LAMA-ckl invariant files that
share no item with the NF probes or with TL.

Why: meta-learners (the token weighter, the learned optimizer) need Wikipedia-style (evidence,
probe) pairs to train on, and on the official track they must never see the items they are judged
on. `invariant_schematic.jsonl` holds 500 facts whose evidence is Wikipedia text; 64 of them are
also NF items (`invariant_descriptive.jsonl`). A row is kept only when its uuid, its fact
(subject, relation, object), its evidence and its probe sentence all differ from every NF and TL
row; the kept rows are split by a hash of their uuid (stable whatever the file order).

    meta = write_official_meta_split("/work/shared/data/lama_ckl", "runs/official_meta")
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from metacl.data.lama import load_lama_jsonl
from metacl.errors import MetaclError
from metacl.utils import write_json_atomic

SOURCE, NF_FILE, TL_FILE = "invariant_schematic.jsonl", "invariant_descriptive.jsonl", "variant.jsonl"


def _keys(items) -> dict[str, set]:
    return {"uuid": {it.uuid for it in items}, "fact": {(it.subject, it.relation_code, it.object) for it in items},
            "evidence": {it.evidence.strip() for it in items}, "probe": {it.task_descriptive.strip() for it in items}}


def official_meta_split(data_dir: str | os.PathLike, val_fraction: float = 0.2) -> dict[str, list[dict]]:
    """{'meta_train': rows, 'meta_val': rows, 'excluded': counts per reason} from the official folder."""
    d = Path(data_dir)
    for f in (SOURCE, NF_FILE, TL_FILE):
        if not (d / f).is_file():
            raise MetaclError(f"{d / f} does not exist; pass the official LAMA-ckl folder (with {SOURCE}, {NF_FILE}, {TL_FILE})")
    if not 0 < val_fraction < 1:
        raise MetaclError(f"val_fraction {val_fraction} must be in (0, 1)")
    held = load_lama_jsonl(d / NF_FILE, require_object_in_evidence=False) + \
        load_lama_jsonl(d / TL_FILE, require_object_in_evidence=False)
    keys = _keys(held)
    excluded = {"uuid": 0, "fact": 0, "evidence": 0, "probe": 0}
    out: dict[str, list[dict]] = {"meta_train": [], "meta_val": []}
    for it in load_lama_jsonl(d / SOURCE, require_object_in_evidence=False):
        mine = {"uuid": it.uuid, "fact": (it.subject, it.relation_code, it.object),
                "evidence": it.evidence.strip(), "probe": it.task_descriptive.strip()}
        hit = next((k for k in ("uuid", "fact", "evidence", "probe") if mine[k] in keys[k]), None)
        if hit is not None:
            excluded[hit] += 1
            continue
        h = int.from_bytes(hashlib.sha256(f"official-meta/{it.uuid}".encode()).digest()[:8], "big") / 2**64
        row = it.to_row()
        row["split"] = "meta_val" if h < val_fraction else "meta_train"
        out[row["split"]].append(row)
    out["excluded"] = [excluded]
    return out


def write_official_meta_split(data_dir: str | os.PathLike, out_dir: str | os.PathLike, val_fraction: float = 0.2) -> dict:
    """Write `meta_train.jsonl`, `meta_val.jsonl` and `official_meta.json` (counts, exclusions, source hashes)."""
    splits = official_meta_split(data_dir, val_fraction)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("meta_train", "meta_val"):
        tmp = out / f".{name}.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in splits[name]:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, out / f"{name}.jsonl")
    d = Path(data_dir)
    meta = {"source": SOURCE, "excluded_because_shared_with_nf_or_tl": splits["excluded"][0],
            "counts": {n: len(splits[n]) for n in ("meta_train", "meta_val")}, "val_fraction": val_fraction,
            "sha256": {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in (SOURCE, NF_FILE, TL_FILE)}}
    write_json_atomic(out / "official_meta.json", meta)
    return meta
