"""LAMA-ckl data: the item schema, a validating JSONL loader, and the TL/NF split loader.

Why validate: a continual-knowledge-learning run trains for many epochs and only then scores
probes; a row whose object is missing from its probe sentence would silently score 0 (or crash
an hour in). So every row is checked up front, and a bad row stops the load with one line that
names the file, the line and the field, and says how to fix it.

The schema is the one of the official LAMA-ckl files (TAALM, NeurIPS 2024); `metacl data world`
writes the same schema, so both load through the same code. Unknown fields are kept in
`LamaItem.extra`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metacl.data.corpus import read_corpus
from metacl.errors import DataError, MetaclError

# Fields every row must carry as non-empty strings: without them a row cannot be trained on or probed.
REQUIRED_TEXT = ("relation_code", "uuid", "task_descriptive", "subject", "relation_label", "object", "evidence")
# Fields of the official schema that are derivable, so a LAMA-like file may omit them.
OPTIONAL_TEXT = ("task_schematic", "masked_evidence")
SCHEMA = REQUIRED_TEXT[:3] + ("task_schematic",) + REQUIRED_TEXT[3:6] + ("masked_evidence", "evidence",
                                                                          "position", "evidence_length",
                                                                          "invariant", "scores")


@dataclass
class LamaItem:
    """One fact: a document that states it (`evidence`) and a probe sentence (`task_descriptive`)."""

    relation_code: str
    uuid: str
    task_descriptive: str
    task_schematic: str
    subject: str
    relation_label: str
    object: str
    masked_evidence: str
    evidence: str
    position: float
    evidence_length: int
    invariant: bool
    scores: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """The JSON row (schema fields first, then the extra ones)."""
        row = {k: getattr(self, k) for k in SCHEMA}
        row.update(self.extra)
        return row


@dataclass
class CklData:
    """The splits of one continual-knowledge-learning run.

    `tl`: facts to learn (their `evidence` is the training data); `nf`: facts not to forget;
    `tl_val`: held-out TL-like facts used only to choose an epoch (None if the folder has none);
    `old_corpus`: pre-training documents when the folder has them (for replay-style strategies).
    """

    tl: list[LamaItem]
    nf: list[LamaItem]
    tl_val: list[LamaItem] | None = None
    old_corpus: list[str] = field(default_factory=list)
    source: str = ""


def _fail(path, lineno, fld, problem, fix) -> DataError:
    return DataError(f"{path}:{lineno}: field '{fld}' {problem}; {fix}")


def validate_row(row: Any, path, lineno: int, require_object_in_evidence: bool = True) -> dict[str, Any]:
    """Check one parsed row; return it normalised (defaults filled in) or raise a one-line DataError."""
    if not isinstance(row, dict):
        raise DataError(f"{path}:{lineno}: row is a JSON {type(row).__name__}, not an object; "
                        "write one JSON object per line")
    for k in REQUIRED_TEXT:
        if k not in row:
            raise _fail(path, lineno, k, "is missing", f"add a non-empty '{k}' string to the row")
        v = row[k]
        if not isinstance(v, str) or not v.strip():
            raise _fail(path, lineno, k, "is empty or not a string", f"give '{k}' a non-empty string")
    for k in OPTIONAL_TEXT:
        if k in row and not isinstance(row[k], str):
            raise _fail(path, lineno, k, "is not a string", f"make '{k}' a string or drop it")
    obj = row["object"]
    if obj not in row["task_descriptive"]:
        raise _fail(path, lineno, "task_descriptive", f"does not contain the object {obj!r}",
                    "the probe sentence must state the object verbatim (same case)")
    if require_object_in_evidence and obj not in row["evidence"]:
        raise _fail(path, lineno, "evidence", f"does not contain the object {obj!r}",
                    "the evidence document must state the fact it teaches")
    out = dict(row)
    out.setdefault("task_schematic",
                   f"Guess the object. \n  subject is {row['subject']} , relation is {row['relation_label']} , object is {obj}")
    out.setdefault("masked_evidence", row["evidence"].replace(obj, "[MASK]"))
    if "position" not in out:
        i = row["evidence"].find(obj)
        out["position"] = i / max(1, len(row["evidence"])) if i >= 0 else -1.0
    elif not isinstance(out["position"], (int, float)) or isinstance(out["position"], bool):
        raise _fail(path, lineno, "position", "is not a number", "give a float (relative object position) or drop it")
    if "evidence_length" not in out:
        out["evidence_length"] = len(row["evidence"])
    elif not isinstance(out["evidence_length"], int) or isinstance(out["evidence_length"], bool):
        raise _fail(path, lineno, "evidence_length", "is not an integer", "give an integer or drop it")
    out.setdefault("invariant", False)
    if not isinstance(out["invariant"], bool):
        raise _fail(path, lineno, "invariant", "is not true/false", "write true or false")
    out.setdefault("scores", {})
    if not isinstance(out["scores"], dict):
        raise _fail(path, lineno, "scores", "is not a JSON object", "write an object such as {} or drop it")
    return out


def _read_rows(path: Path, require_object_in_evidence: bool) -> list[dict[str, Any]]:
    if not path.is_file():
        raise MetaclError(f"data file {path} does not exist; check the path")
    rows, seen = [], {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); "
                                "write one JSON object per line") from e
            row = validate_row(row, path, lineno, require_object_in_evidence)
            if row["uuid"] in seen:
                raise _fail(path, lineno, "uuid", f"{row['uuid']!r} repeats line {seen[row['uuid']]}",
                            "give every row a unique uuid")
            seen[row["uuid"]] = lineno
            rows.append(row)
    if not rows:
        raise DataError(f"{path}:1: file holds no rows; give at least one JSON object per line")
    return rows


def load_lama_dataset(path: str | os.PathLike, require_object_in_evidence: bool = True):
    """The validated file as a `datasets.Dataset` (one row per fact).

    Why `scores` and extra fields travel as JSON strings: Arrow needs one schema per column, and
    `scores` is a nested dict whose keys differ between files; a string keeps any file loadable.
    """
    import datasets

    path = Path(path)
    rows = _read_rows(path, require_object_in_evidence)
    flat = []
    for r in rows:
        f = {k: r[k] for k in SCHEMA}
        f["position"] = float(f["position"])
        f["scores"] = json.dumps(f["scores"], sort_keys=True)
        f["extra"] = json.dumps({k: v for k, v in r.items() if k not in SCHEMA}, sort_keys=True)
        flat.append(f)
    return datasets.Dataset.from_list(flat)


def load_lama_jsonl(path: str | os.PathLike, require_object_in_evidence: bool = True) -> list[LamaItem]:
    """Load and validate a LAMA-ckl-schema JSONL file; a bad row raises a one-line `DataError`."""
    ds = load_lama_dataset(path, require_object_in_evidence)
    items = []
    for r in ds:
        r = dict(r)
        r["scores"] = json.loads(r["scores"])
        r["extra"] = json.loads(r["extra"])
        items.append(LamaItem(**r))
    return items


def save_lama_jsonl(path: str | os.PathLike, items: list[LamaItem | dict]) -> None:
    """Write items (or row dicts) as JSONL, one object per line, keys in a stable order."""
    with open(path, "w", encoding="utf-8") as fh:
        for it in items:
            row = it.to_row() if isinstance(it, LamaItem) else it
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# File names of the two supported folder layouts.
WORLD_FILES = {"tl": "tl.jsonl", "nf": "nf.jsonl", "tl_val": "tl_val.jsonl"}
OFFICIAL_FILES = {"tl": "variant.jsonl", "nf": "invariant_descriptive.jsonl"}


def _old_corpus(folder: Path) -> list[str]:
    f = folder / "pretrain_corpus.jsonl"
    if not f.is_file():
        return []
    return read_corpus([f])


def load_ckl_data(data_dir: str | os.PathLike | None = None, tl: str | os.PathLike | None = None,
                  nf: str | os.PathLike | None = None, tl_val: str | os.PathLike | None = None) -> CklData:
    """TL/NF(/TL_val) items from a folder or from explicit files (explicit files win).

    Folder layouts: a generated world (`tl.jsonl`, `nf.jsonl`, optional `tl_val.jsonl`, and
    `pretrain_corpus.jsonl` as the old corpus) or the official LAMA-ckl folder (`variant.jsonl` is
    TL, `invariant_descriptive.jsonl` is NF; it has no TL_val).
    """
    files: dict[str, Path | None] = {"tl": None, "nf": None, "tl_val": None}
    old: list[str] = []
    source = "files"
    if data_dir is not None:
        d = Path(data_dir)
        if not d.is_dir():
            raise MetaclError(f"data folder {d} does not exist; pass a folder from `metacl data world` or the LAMA-ckl folder")
        if (d / WORLD_FILES["tl"]).is_file() or (d / WORLD_FILES["nf"]).is_file():
            layout, source = WORLD_FILES, "world"
        elif (d / OFFICIAL_FILES["tl"]).is_file() or (d / OFFICIAL_FILES["nf"]).is_file():
            layout, source = OFFICIAL_FILES, "lama_ckl"
        else:
            raise MetaclError(f"data folder {d} holds neither tl.jsonl/nf.jsonl nor variant.jsonl/"
                              "invariant_descriptive.jsonl; pass --tl FILE --nf FILE instead")
        for k, name in layout.items():
            if (d / name).is_file():
                files[k] = d / name
        old = _old_corpus(d)
    for k, v in {"tl": tl, "nf": nf, "tl_val": tl_val}.items():
        if v is not None:
            files[k] = Path(v)
    for k in ("tl", "nf"):
        if files[k] is None:
            where = f"in {data_dir}" if data_dir is not None else "(no --data folder given)"
            raise MetaclError(f"no {k.upper()} file {where}; pass --data DIR or --{k} FILE")
    return CklData(
        tl=load_lama_jsonl(files["tl"]),
        nf=load_lama_jsonl(files["nf"]),
        tl_val=load_lama_jsonl(files["tl_val"]) if files["tl_val"] is not None else None,
        old_corpus=old,
        source=source,
    )
