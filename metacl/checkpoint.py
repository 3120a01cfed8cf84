"""Checkpoints as safetensors + JSON, written atomically.

Why: long runs die. A checkpoint is a directory holding `tensors.safetensors` (all tensors,
flat names) and `state.json` (everything else: step counters, configs, RNG states as lists).
It is written into a temporary sibling directory and renamed into place, so a kill during the
write leaves the previous checkpoint intact and loadable. No pickle anywhere: safetensors
cannot execute code and JSON cannot either.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from metacl.errors import CheckpointError

TENSORS = "tensors.safetensors"
STATE = "state.json"


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Atomically write `tensors` and JSON-serialisable `state` to directory `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(flat, str(tmp / TENSORS))
        with open(tmp / STATE, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by `save_checkpoint`; a clear `CheckpointError` if unreadable."""
    path = Path(path)
    if not (path / TENSORS).is_file() or not (path / STATE).is_file():
        raise CheckpointError(
            f"checkpoint {path} is incomplete: expected {TENSORS} and {STATE}; point to a directory written by metacl"
        )
    try:
        tensors = load_file(str(path / TENSORS))
        with open(path / STATE) as f:
            state = json.load(f)
    except Exception as e:  # corrupt bytes, truncated JSON, ...
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(e).__name__}: {e}); delete it or resume from an earlier one") from e
    return tensors, state


def rng_state() -> dict[str, Any]:
    """Python/torch RNG states as JSON-friendly lists (for exact resume)."""
    import random

    py = random.getstate()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
