"""Plain-text or JSONL corpora as a list of documents (pre-training text, old corpora of strategies)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from metacl.errors import DataError, MetaclError


def read_corpus(files: Iterable[str | os.PathLike]) -> list[str]:
    """Documents from plain-text or JSONL files (JSONL: the `text` field, else `evidence`)."""
    docs: list[str] = []
    files = list(files)
    if not files:
        raise MetaclError("no corpus files given; pass at least one with --corpus FILE")
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise MetaclError(f"corpus file {path} does not exist; check the path given to --corpus")
        jsonl = path.suffix.lower() in (".jsonl", ".json")
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                if not jsonl:
                    docs.append(line)
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg}); fix the line or pass a plain-text file") from e
                text = row.get("text") if isinstance(row, dict) else None
                if text is None and isinstance(row, dict):
                    text = row.get("evidence")
                if not isinstance(text, str) or not text.strip():
                    raise DataError(f"{path}:{lineno}: field 'text' (or 'evidence') missing or empty; "
                                    "each JSONL corpus row needs a non-empty text or evidence string")
                docs.append(text.strip())
    if not docs:
        raise MetaclError(f"corpus {', '.join(map(str, files))} holds no text; give files with at least one document")
    return docs
