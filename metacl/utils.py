"""Small helpers used across metacl."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Iterable

import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, torch (CPU and CUDA) and return a dedicated torch.Generator."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON via a temp file + rename so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
