"""Mixed precision and peak-memory reporting for meta-training.

Why: on a GPU, bf16 autocast roughly halves activation memory and speeds up matmuls, and
memory is what limits how many inner steps K a meta-step can differentiate. Master weights
stay fp32 (autocast only changes the dtype that ops compute in), so the outer optimizer and
checkpoints are unchanged. bf16 needs no loss scaling (same exponent range as fp32).

Peak memory is reported as the CUDA allocator's peak when the run is on a GPU, otherwise
as the process's peak resident set size; the label says which, so figures are not mixed up.
"""

from __future__ import annotations

import contextlib
import resource
import sys

import torch

from metacl.errors import MetaclError

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise MetaclError(f"--precision {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    return precision


def autocast(precision: str, device: torch.device | str = "cpu"):
    """A context manager: bf16 autocast on `device`'s type for "bf16", nothing for "fp32"."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def peak_memory(device: torch.device | str = "cpu") -> dict[str, float | str]:
    """{"peak_mem_mib": value, "peak_mem_kind": "cuda_max_allocated" | "cpu_max_rss"}.

    CPU: ru_maxrss is in KiB on Linux and bytes on macOS; it covers the whole process
    (Python, torch, data), not just tensors.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return {"peak_mem_mib": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1), "peak_mem_kind": "cuda_max_allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mib = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    return {"peak_mem_mib": round(mib, 1), "peak_mem_kind": "cpu_max_rss"}
