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


def truncate_jsonl(path: str | os.PathLike, keep_through_step: int) -> None:
    """Keep only the rows of a metrics log with `step <= keep_through_step`, atomically.

    Why: a run killed after logging but before its next checkpoint leaves rows the resumed run
    will write again, and a kill in the middle of a write leaves a partial last line. Both are
    dropped here so a resumed log reads exactly like an uninterrupted one.
    """
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the partial line of a killed write
            continue
        if row.get("step", 0) <= keep_through_step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(r + "\n" for r in kept))
    tmp.replace(path)


def default_device(requested: str | torch.device | None = None, info=None) -> torch.device:
    """The device a command runs on: `requested` (--device) if given, else CUDA when available, else CPU.

    The one device choice in metacl. Under torchrun (`info`, a `metacl.distributed.DistInfo`
    with several ranks) a bare "cuda" means this process's GPU, LOCAL_RANK.
    """
    ranked = info is not None and info.enabled
    if requested:
        dev = torch.device(requested)
        if ranked and dev.type == "cuda" and dev.index is None:
            return torch.device("cuda", info.local_rank)
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank) if ranked else torch.device("cuda")
    return torch.device("cpu")


# ---------------------------------------------------------------------------- output folders
# Why: every command writes into `--out`, and pointing two different experiments at one folder
# silently mixes their files (a pretrain would overwrite a ckl run's config.json; a meta-trainer
# would append to another run's metrics.jsonl). Each kind of run leaves a recognisable file, so a
# command can tell which kind of run a folder holds *before* it writes anything.

def run_kind(out: str | os.PathLike) -> str | None:
    """The kind of metacl run stored in folder `out` ("ckl run", "ckl sequence", "meta-train optimizer",
    "meta-train token-weighting", "pretrain"), or None when it holds none (or does not exist)."""
    out = Path(out)
    if not out.is_dir():
        return None
    cfg = out / "config.json"
    if cfg.is_file():
        try:
            js = json.loads(cfg.read_text())
        except (OSError, ValueError):
            js = None
        if isinstance(js, dict) and "hash" in js:
            inner = js.get("config") if isinstance(js.get("config"), dict) else {}
            return "ckl sequence" if "world" in inner and "periods" in inner else "ckl run"
        if isinstance(js, dict) and "model_type" in js:
            return "pretrain"
    if (out / "best" / "token_weighter.json").is_file() or (out / "last" / "token_weighter.json").is_file():
        return "meta-train token-weighting"
    state = out / "checkpoint" / "state.json"
    if state.is_file():
        try:
            js = json.loads(state.read_text())
        except (OSError, ValueError):
            js = None
        if isinstance(js, dict) and "identity" in js:
            return "meta-train token-weighting"
        if isinstance(js, dict) and "family" in (js.get("config") or {}):
            return "meta-train optimizer"
    if (out / "optimizer.json").is_file() or (out / "optimizer.safetensors").is_file():
        return "meta-train optimizer"
    return None


def check_out_kind(out: str | os.PathLike, kind: str) -> None:
    """Refuse (one-line MetaclError) an `--out` folder that holds a different kind of metacl run.

    Same-kind folders are left to the command's own identity check (config hash or checkpoint
    settings), which decides between resuming and refusing.
    """
    from metacl.errors import MetaclError

    if Path(out).exists() and not Path(out).is_dir():
        raise MetaclError(f"--out {out} is a file, not a folder; pass a new or existing folder")
    found = run_kind(out)
    if found is not None and found != kind:
        raise MetaclError(f"--out {out} holds a `metacl {found}` run, not a `metacl {kind}` run; "
                          "choose a new --out folder (or delete the old one)")


def check_run_folder(out: str | os.PathLike, kind: str, config_hash: str) -> Path:
    """Refuse an `--out` that another run owns, before anything is written; returns it as a Path.

    Why one function: `ckl run` and `ckl sequence` resume into their `--out`, so the folder must be
    empty, or hold a run of the same kind whose `config.json` hash equals this one's.
    """
    from metacl.errors import MetaclError

    out = Path(out)
    check_out_kind(out, kind)
    cfg_path = out / "config.json"
    if cfg_path.is_file():
        try:
            stored = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise MetaclError(f"{cfg_path} is corrupt ({e.msg}); delete the folder or choose another --out") from e
        if stored.get("hash") != config_hash:
            raise MetaclError(f"--out {out} holds a different run (config hash {stored.get('hash')} != {config_hash}); "
                              "choose a new --out folder or delete the old one")
    elif out.is_dir() and any(out.iterdir()):
        raise MetaclError(f"--out {out} is not empty and holds no metacl run (no config.json); choose a new or empty folder")
    return out


def snapshot_dir(path: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256 of the bytes} of every file under `path` (empty when absent).

    Used to prove that a refused command left its output folder as it was (content, not
    timestamps: rewriting a file with identical bytes changes nothing a user can see).
    """
    import hashlib

    path = Path(path)
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}
