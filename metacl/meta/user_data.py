"""Meta-training data for `meta-train token-weighting`: a world folder, or the user's own pairs file.

Why a pairs file: a user with their own documents has one LAMA-ckl-schema JSONL of (evidence,
probe) rows and a file of old facts, not a generated world's meta_train / meta_val / meta_nf
split. `--data PAIRS.jsonl --nf OLD.jsonl` splits the pairs into meta-train and meta-val by
themselves:

- deterministic and stable: a row goes to meta-val when `sha256(uuid)`, read as a number in
  [0, 1), is below `--val-fraction`; the same row always lands on the same side, whatever the
  file order, whatever rows are added or removed around it (so a grown file keeps its old
  validation rows out of meta-training);
- both sides non-empty: with at least two distinct uuids, an empty meta-val gets the row of
  smallest hash, an empty meta-train the row of largest;
- the NF file (old facts) gives the retention probes (`--retention`) and the validation's NF
  probes, exactly as meta_nf.jsonl of a world does.

The split is written to OUT/data/ (meta_train.jsonl, meta_val.jsonl, meta_nf.jsonl,
split.json) so every run can be inspected and the validator reads real files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from metacl.errors import MetaclError

SPLIT_DIR = "data"


def split_key(uuid: str) -> float:
    """sha256 of the uuid as a number in [0, 1): the row's fixed place in every split."""
    return int(hashlib.sha256(str(uuid).encode("utf-8")).hexdigest()[:15], 16) / 16**15


def split_pairs(items: list, val_fraction: float) -> tuple[list, list]:
    """(meta_train, meta_val) by `split_key(item.uuid) < val_fraction`; order within each kept."""
    if not 0.0 < val_fraction < 1.0:
        raise MetaclError(f"--val-fraction {val_fraction} must lie strictly between 0 and 1; pass e.g. 0.2")
    keys = {it.uuid: split_key(it.uuid) for it in items}
    if len(keys) < 2:
        raise MetaclError(f"the pairs file has {len(keys)} distinct uuid(s); meta-training and its validation need "
                          "at least 2 (give each row its own 'uuid')")
    val_ids = {u for u, k in keys.items() if k < val_fraction}
    if not val_ids:
        val_ids = {min(keys, key=keys.get)}
    if len(val_ids) == len(keys):
        val_ids.discard(max(keys, key=keys.get))
    return [it for it in items if it.uuid not in val_ids], [it for it in items if it.uuid in val_ids]


@dataclass
class MetaData:
    """The three item lists of a meta-training run and the files the validator reads."""

    train: list
    val: list
    nf: list
    files: dict[str, Path]
    to_write: dict[str, list] = field(default_factory=dict)  # file -> items (user pairs only)
    info: dict = field(default_factory=dict)

    def write(self) -> None:
        """Write the split (user pairs only; a world folder is read in place)."""
        if not self.to_write:
            return
        from metacl.data.lama import save_lama_jsonl
        from metacl.utils import write_json_atomic

        for name, items in self.to_write.items():  # temp file + rename: never half a file
            dst = self.files[name]
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            save_lama_jsonl(tmp, items)
            tmp.replace(dst)
        write_json_atomic(self.files["meta_train"].parent / "split.json", self.info)


def resolve_meta_data(data: str | Path, nf: str | Path | None, val_fraction: float, out: str | Path) -> MetaData:
    """Load (and for a pairs file, split) the meta-training data; nothing is written yet.

    `data` a folder: meta_train.jsonl, meta_nf.jsonl (or `nf`) and optional meta_val.jsonl.
    `data` a file: the pairs, split by `split_pairs`; `nf` is then required.
    """
    from metacl.data.lama import load_lama_jsonl

    data = Path(data)
    if data.is_dir():
        files = {k: data / f"{k}.jsonl" for k in ("meta_train", "meta_val", "meta_nf")}
        if nf is not None:
            files["meta_nf"] = _existing(nf, "--nf")
        missing = [str(f) for k, f in files.items() if k != "meta_val" and not f.is_file()]
        if missing:
            raise MetaclError(f"--data {data} lacks {', '.join(missing)}; generate a world with `metacl data world --out DIR`, "
                              "or pass your own pairs as --data PAIRS.jsonl --nf OLD_FACTS.jsonl")
        return MetaData(load_lama_jsonl(files["meta_train"]),
                        load_lama_jsonl(files["meta_val"]) if files["meta_val"].is_file() else [],
                        load_lama_jsonl(files["meta_nf"]), files)
    if not data.exists():
        raise MetaclError(f"--data {data} does not exist; pass a world folder or a LAMA-schema JSONL of (evidence, probe) pairs")
    if nf is None:
        raise MetaclError(f"--data {data} is a pairs file: also pass --nf FILE, a LAMA-schema JSONL of old facts "
                          "(the retention and validation NF probes)")
    nf_path = _existing(nf, "--nf")
    pairs = load_lama_jsonl(data)
    nf_items = load_lama_jsonl(nf_path)
    train, val = split_pairs(pairs, val_fraction)
    d = Path(out) / SPLIT_DIR
    files = {k: d / f"{k}.jsonl" for k in ("meta_train", "meta_val", "meta_nf")}
    info = {"source": str(data), "nf": str(nf_path), "val_fraction": val_fraction,
            "rule": "meta_val iff int(sha256(uuid)[:15], 16) / 16**15 < val_fraction (non-empty sides enforced)",
            "counts": {"meta_train": len(train), "meta_val": len(val), "meta_nf": len(nf_items)}}
    return MetaData(train, val, nf_items, files, {"meta_train": train, "meta_val": val, "meta_nf": nf_items}, info)


def _existing(path: str | Path, flag: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise MetaclError(f"{flag} {p} does not exist or is not a file; pass a LAMA-schema JSONL file")
    return p
