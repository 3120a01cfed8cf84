"""Checkpoints as safetensors + JSON, written so that a kill at any moment leaves one loadable.

Why: long runs die (SIGKILL, OOM killer, preemption), and they die while writing too. A
checkpoint is a directory holding `tensors.safetensors` (all tensors, flat names) and
`state.json` (everything else: step counters, configs, RNG states as lists). No pickle
anywhere: safetensors cannot execute code and JSON cannot either.

How a write survives a kill at any point:

1. everything is written into a fresh sibling `.{name}.tmp-*`; `state.json` is written under
   another name, fsynced and renamed last, so a directory that holds `state.json` is complete;
2. the current checkpoint is renamed aside to `.{name}.old-*`, the new one renamed to `name`;
3. the aside copy and stale temporaries of earlier, killed writes are deleted.

A kill in 1 leaves `name` untouched. A kill between the two renames of 2 leaves no `name`,
but a complete `.old-*` (and perhaps a complete `.tmp-*`): `load_checkpoint` then falls back to
the newest complete sibling. A kill in 3 leaves the new checkpoint in place.

`flatten_state` / `unflatten_state` turn nested state (an optimizer's `state_dict()`, a
strategy's state) into the tensors + JSON pair that `save_checkpoint` takes, and back.
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
_PARTIAL = ".state.json.partial"


def _fsync_dir(d: Path) -> None:
    """Make the renames in `d` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _complete(d: Path) -> bool:
    return (d / TENSORS).is_file() and (d / STATE).is_file()


def _siblings(path: Path) -> list[Path]:
    """Leftovers of earlier writes of `path`: `.{name}.tmp-*` and `.{name}.old-*` directories."""
    if not path.parent.is_dir():
        return []
    pre = (f".{path.name}.tmp-", f".{path.name}.old-")
    return [p for p in path.parent.iterdir() if p.name.startswith(pre) and p.is_dir()]


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The directory `load_checkpoint(path)` would read, or None when there is no complete one.

    `path` itself when complete; otherwise the newest complete leftover of a write that was
    killed between its two renames.
    """
    path = Path(path)
    if _complete(path):
        return path
    done = [p for p in _siblings(path) if _complete(p)]
    if not done:
        return None
    return max(done, key=lambda p: (p / STATE).stat().st_mtime_ns)


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write `tensors` and JSON-serialisable `state` to directory `path`, crash-safely (see module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(flat, str(tmp / TENSORS))
        with open(tmp / TENSORS, "rb+") as f:
            os.fsync(f.fileno())
        with open(tmp / _PARTIAL, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp / _PARTIAL, tmp / STATE)  # from here on `tmp` is a complete checkpoint
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.rmdir(old)  # only the unique name is wanted; os.replace needs it absent
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    for leftover in _siblings(path):  # this write's aside copy and any killed write's debris
        shutil.rmtree(leftover, ignore_errors=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by `save_checkpoint`; a clear `CheckpointError` if unreadable.

    When a write was killed after moving the previous checkpoint aside, that one is read.
    """
    path = Path(path)
    found = find_checkpoint(path)
    if found is None:
        raise CheckpointError(
            f"checkpoint {path} is incomplete: expected {TENSORS} and {STATE}; point to a directory written by metacl"
        )
    try:
        tensors = load_file(str(found / TENSORS))
        with open(found / STATE) as f:
            state = json.load(f)
    except Exception as e:  # corrupt bytes, truncated JSON, ...
        raise CheckpointError(f"checkpoint {found} is corrupt ({type(e).__name__}: {e}); delete it or resume from an earlier one") from e
    return tensors, state


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete `path` and every leftover of its writes (e.g. once the run it belongs to is finished)."""
    path = Path(path)
    for d in [path, *_siblings(path)]:
        shutil.rmtree(d, ignore_errors=True)


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


def generator_state(gen: torch.Generator | None) -> torch.Tensor | None:
    """The state of a dedicated `torch.Generator` as a uint8 tensor (store it with the tensors)."""
    return None if gen is None else gen.get_state().clone()


def set_generator_state(gen: torch.Generator | None, state: torch.Tensor | None) -> None:
    """Restore `gen` in place: objects that hold a reference to it (reservoirs, batchers) follow."""
    if gen is not None and state is not None:
        gen.set_state(state.to(torch.uint8).cpu())


# ---------------------------------------------------------------------------- nested state
# JSON has no tensors, tuples or non-string keys, all of which a torch optimizer's state_dict
# holds. Tensors go to the safetensors side under `prefix/<n>` and are referenced from JSON;
# tuples and int-keyed dicts are tagged so they come back as they were.

def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of `obj`; its tensors are added to `tensors` under keys starting `prefix/`."""
    if torch.is_tensor(obj):
        key = f"{prefix}/{len(tensors)}"  # unique: `tensors` only grows
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            if any(k.startswith("__") and k.endswith("__") for k in obj):
                return {"__items__": [[k, flatten_state(v, prefix, tensors)] for k, v in obj.items()]}
            return {k: flatten_state(v, prefix, tensors) for k, v in obj.items()}
        return {"__items__": [[k, flatten_state(v, prefix, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, prefix, tensors) for v in obj]}
    if isinstance(obj, list):
        return [flatten_state(v, prefix, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__} under {prefix}")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"checkpoint is missing tensor {key!r}; it was written by another version or is damaged")
            return tensors[key]
        if set(obj) == {"__tuple__"}:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {(tuple(k) if isinstance(k, list) else k): unflatten_state(v, tensors) for k, v in obj["__items__"]}
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj
