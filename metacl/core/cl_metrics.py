"""Continual-learning metrics from an accuracy matrix: ACC, BWT, FWT.

Why one tiny module: every benchmark in metacl (Split-Digits here, task sequences of language
models elsewhere) reports the same three numbers, and they are easy to get subtly wrong (which
row, which diagonal, what baseline). The definitions follow Lopez-Paz & Ranzato (GEM, 2017):

    R[i, j] = accuracy on task j after training on tasks 0..i   (T x T)
    b[j]    = accuracy on task j of the model before any training (random init)

    ACC = mean_j R[T-1, j]                       final average accuracy
    BWT = mean_{j<T-1} (R[T-1, j] - R[j, j])     how much later tasks changed earlier ones (<0: forgetting)
    FWT = mean_{j>0}  (R[j-1, j] - b[j])         how much earlier tasks helped a task before seeing it
"""

from __future__ import annotations

from typing import Sequence

import torch

from metacl.errors import MetaclError


def _as_matrix(acc: Sequence[Sequence[float]] | torch.Tensor) -> torch.Tensor:
    R = torch.as_tensor(acc, dtype=torch.float64)
    if R.dim() != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 1:
        raise MetaclError(
            f"accuracy matrix has shape {tuple(R.shape)}; expected square T x T with R[i, j] = acc on task j after task i"
        )
    return R


def acc(R) -> float:
    """Average accuracy over all tasks after the last one."""
    R = _as_matrix(R)
    return float(R[-1].mean())


def bwt(R) -> float:
    """Backward transfer; 0.0 for a single task (nothing to forget)."""
    R = _as_matrix(R)
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float((R[-1, : T - 1] - R.diagonal()[: T - 1]).mean())


def fwt(R, baseline: Sequence[float] | torch.Tensor | None = None) -> float:
    """Forward transfer against `baseline` (per-task accuracy before training; zeros if None)."""
    R = _as_matrix(R)
    T = R.shape[0]
    if T < 2:
        return 0.0
    b = torch.zeros(T, dtype=torch.float64) if baseline is None else torch.as_tensor(baseline, dtype=torch.float64)
    if b.shape != (T,):
        raise MetaclError(f"FWT baseline has {tuple(b.shape)} entries; expected {T} (one accuracy per task)")
    return float((R[torch.arange(T - 1), torch.arange(1, T)] - b[1:]).mean())


def cl_summary(R, baseline=None) -> dict[str, float]:
    """All three metrics in one dict (the form written to summary.json files)."""
    return {"ACC": acc(R), "BWT": bwt(R), "FWT": fwt(R, baseline)}
