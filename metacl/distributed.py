"""Data parallelism for meta-training and CKL runs, on PyTorch's own `torch.distributed`.

Why this file: meta-gradients are expensive (K unrolled inner steps per meta-example), so
the cheap way to go faster is more processes. Every rank draws the *same* global meta-batch
(same seed, same step), takes its contiguous share with `shard`, computes the mean gradient of
that share, and `all_reduce_mean_` averages the gradients. Equal shares make the mean of
means equal the global mean, so every rank takes the identical outer step and the result
matches a single process with the same global batch (up to float summation order).

Launch with torchrun, which sets RANK / WORLD_SIZE / LOCAL_RANK:

    torchrun --standalone --nproc_per_node 2 -m metacl.cli.main meta-train optimizer ...

A plain `python` launch (no torchrun env) is one process and every function here is a no-op,
so single-process code needs no special cases. Only rank 0 (`info.is_main`) writes files.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist

from metacl.errors import MetaclError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: global rank, number of processes, GPU index on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo(0, 1, 0)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise MetaclError(f"environment variable {name}={raw!r} is not an integer; launch with torchrun or unset it") from None


def init(device: str | None = None) -> DistInfo:
    """Read the torchrun environment and join the process group (once).

    `device`: "cuda"/"cuda:N" picks NCCL and binds this process to GPU LOCAL_RANK; anything
    else (or None without CUDA) picks gloo, which is what the CPU tests use.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE
    info = DistInfo(_env_int("RANK", 0), world, _env_int("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=info.rank, world_size=info.world_size)
        # leave the group at exit, not after each command: a second init in the same torchrun
        # job (two commands in one script) would otherwise have to re-rendezvous
        atexit.register(cleanup, info)
    return info


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's contiguous, equal share of the global batch `items`.

    Unequal shares would make the average of per-rank means differ from the global mean, so
    they are refused rather than silently weighted wrong.
    """
    items = list(items)
    if not info.enabled:
        return items
    n = len(items)
    if n % info.world_size != 0:
        raise MetaclError(
            f"global meta-batch of {n} cannot be split equally over {info.world_size} processes; "
            f"make the global batch a multiple of --nproc_per_node (e.g. {max(1, n // info.world_size + 1) * info.world_size})"
        )
    per = n // info.world_size
    return items[info.rank * per:(info.rank + 1) * per]


def all_reduce_mean_(tensors: Iterable[torch.Tensor | None], info: DistInfo) -> None:
    """Average tensors (typically `.grad`s) over ranks, in place. `None` entries are skipped.

    Tensors are flattened into one buffer so the whole gradient costs a single collective.
    Every rank must pass the same tensors in the same order (a missing grad is zeros).
    """
    if not info.enabled:
        return
    ts = [t for t in tensors if t is not None]
    if not ts:
        return
    dtype = ts[0].dtype if all(t.dtype == ts[0].dtype for t in ts) else torch.float32
    flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in ts])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    off = 0
    for t in ts:
        n = t.numel()
        t.copy_(flat[off:off + n].view_as(t).to(t.dtype))
        off += n


def all_reduce_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if any rank says True: ranks must agree on skipping a NaN step."""
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_(tensors: Iterable[torch.Tensor], info: DistInfo, src: int = 0) -> None:
    """Overwrite every rank's tensors with rank `src`'s (start all ranks from identical weights)."""
    if not info.enabled:
        return
    for t in tensors:
        dist.broadcast(t.data, src=src)


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (e.g. before reading a file that rank 0 just wrote)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group (call once at the end of a torchrun job)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """NCCL only moves CUDA tensors; gloo only CPU ones."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
