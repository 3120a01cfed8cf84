"""Activation checkpointing for inner steps that themselves call `autograd.grad`.

Why not `torch.utils.checkpoint`: its non-reentrant mode drops every saved tensor as soon as
it is saved. An inner step computes its own gradient (`autograd.grad(create_graph=True)`)
*inside* the forward pass, which unpacks those tensors at once, so torch re-runs the whole
step during the forward and again during backward (three loss evaluations per step
instead of two). Here saved tensors stay alive until the step returns, are then released, and
the step is recomputed once, on first use, during the outer backward. Only the step's inputs
(params, optimizer state, batch) stay alive between forward and backward, so memory no longer
grows with activations times K.

Correctness needs the step to be deterministic given its inputs and RNG state: the recompute
must save the same tensors in the same order (checked; a mismatch raises).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor


class _Slot:
    """A saved tensor that can be dropped after the forward and refilled by recomputation."""

    __slots__ = ("value", "index")

    def __init__(self, value: Tensor, index: int):
        self.value, self.index = value, index


def _rng_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []


def checkpoint_step(fn: Callable[..., Any], *args: Any, regen: Callable[[], tuple] | None = None) -> Any:
    """Run `fn(*args)` keeping no saved tensors after it returns; recompute them on backward.

    `regen`: when given, the recomputation calls `fn(*regen())` instead of holding on to `args`
    (so the inputs themselves need not stay alive; `regen` must rebuild equal values).
    """
    slots: list[_Slot] = []
    held: list[Any] = [args if regen is None else None]
    devices = _rng_devices()
    cpu_rng = torch.get_rng_state()
    cuda_rng = [torch.cuda.get_rng_state(d) for d in devices]

    def recompute() -> None:
        values: list[Tensor] = []

        def pack_again(t: Tensor) -> int:
            values.append(t.detach() if t.requires_grad else t)
            return len(values) - 1

        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu_rng)
            for d, s in zip(devices, cuda_rng):
                torch.cuda.set_rng_state(s, d)
            call_args = held[0] if regen is None else regen()
            with torch.autograd.graph.saved_tensors_hooks(pack_again, values.__getitem__), torch.enable_grad():
                fn(*call_args)
        if len(values) != len(slots):
            raise RuntimeError(
                f"checkpoint: the inner step saved {len(slots)} tensors in forward but {len(values)} when recomputed; "
                "the step is not deterministic (data-dependent control flow?); use checkpoint=False"
            )
        for s in slots:
            s.value = values[s.index]

    def pack(t: Tensor) -> _Slot:
        slot = _Slot(t, len(slots))
        slots.append(slot)
        return slot

    def unpack(slot: _Slot) -> Tensor:
        if slot.value is None:
            recompute()
        return slot.value

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = fn(*args)
    for s in slots:  # the forward is done: let the step's activations go
        s.value = None
    return out
