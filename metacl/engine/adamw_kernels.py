"""The differentiable AdamW step's forward and backward as single compiled loops (CPU, large tensors).

Why: in a token-weighting meta-step the inner AdamW updates of every per-example copy of the
base LM, and their hand-written backward, were ~45% of the time (profile in
docs/results/meta_throughput_issue18/profile_before.md): each update is ~8 elementwise kernels
and its backward ~15, each a full pass over memory of a tensor with millions of entries.
`torch.compile` turns each into one loop that reads every input once and writes every output
once. The formulas are those of `optimizers._AdamWStep` (same ops in the same order, written
out-of-place), so the values agree with the eager kernels to rounding (tests/test_engine_speed.py).

Used only where it pays and is safe: CPU tensors with at least `MIN_NUMEL` entries (small
tensors keep the eager kernels, so tiny test models never compile), contiguous, one float
dtype, outside `torch.func` transforms and outside a recorded (create_graph) backward. The
first use compiles (seconds; it needs a C++ compiler, and the result is cached on disk by
torch); if compiling or running fails for any reason, a warning is given once and the eager
kernels are used from then on (`disable()` does the same on purpose).
"""

from __future__ import annotations

import types
import warnings
from typing import Any

import torch
from torch import Tensor

MIN_NUMEL = 1 << 16  # below this a compiled call's overhead outweighs the passes it saves
_state: dict[str, Any] = {"failed": None, "enabled": True}
_compiled: dict[tuple, Any] = {}  # variant key -> compiled function


def adamw_forward(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step_size: float, b1: float, b2: float, eps: float,
                  bc2_sqrt: float, decay: float) -> tuple[Tensor, Tensor, Tensor]:
    """(p', m', v') of one AdamW update; `_AdamWStep.forward`'s formula, out of place."""
    m_new = torch.lerp(m, g, 1.0 - b1)
    v_new = v * b2 + (1.0 - b2) * (g * g)
    d = v_new.clamp_min(torch.finfo(v_new.dtype).tiny).sqrt() / bc2_sqrt + eps
    return p * decay - step_size * (m_new / d), m_new, v_new


def adamw_backward(gp: Tensor | None, gm: Tensor | None, gv: Tensor | None, g: Tensor, m_new: Tensor, v_new: Tensor,
                   step_size: float, b1: float, b2: float, eps: float, bc2_sqrt: float,
                   need_g: bool, need_m: bool, need_v: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(dg, dm, dv) of one AdamW update; the derivative written in `_AdamWStep` (see its docstring).

    Out-of-place ops of saved inputs/outputs only, so it is differentiable again: `_AdamWStep.backward`
    calls it eagerly for a recorded (create_graph) backward, and compiled via `backward` otherwise.
    """
    tiny = torch.finfo(v_new.dtype).tiny
    dm_new, dv_new = gm, gv
    if gp is not None:
        s = v_new.clamp_min(tiny).sqrt()
        d = s / bc2_sqrt + eps
        q = gp / d
        dm_new = -step_size * q if gm is None else gm - step_size * q
        r = torch.where(v_new < tiny, 0.0, q * m_new / d / s * (step_size / (2.0 * bc2_sqrt)))
        dv_new = r if gv is None else gv + r
    dg = None
    if need_g:
        if dm_new is not None and dv_new is not None:
            dg = dm_new * (1.0 - b1) + 2.0 * (1.0 - b2) * g * dv_new
        elif dm_new is not None:
            dg = dm_new * (1.0 - b1)
        elif dv_new is not None:
            dg = 2.0 * (1.0 - b2) * g * dv_new
    dm = b1 * dm_new if need_m and dm_new is not None else None
    dv = b2 * dv_new if need_v and dv_new is not None else None
    return dg, dm, dv


def runs_on(dtype: torch.dtype, device: torch.device, numel: int) -> bool:
    """Would the compiled kernels run on a contiguous tensor of this dtype, device and size here?"""
    return (_state["enabled"] and _state["failed"] is None and not torch._C._are_functorch_transforms_active()
            and device.type == "cpu" and numel >= MIN_NUMEL and dtype in (torch.float32, torch.float64))


def usable(*tensors: Tensor | None) -> bool:
    """May the compiled kernels run on these tensors (see the module docstring)?"""
    ts = [t for t in tensors if t is not None]
    first = ts[0]
    if not runs_on(first.dtype, first.device, first.numel()):
        return False
    return all(t.dtype == first.dtype and t.shape == first.shape and t.is_contiguous() and t.device == first.device
               and not torch._C._functorch.is_functorch_wrapped_tensor(t) for t in ts)


def _variant(fn: Any, key: tuple) -> Any:
    """A compiled copy of `fn` with its own code object, so its cache holds only the graphs of `key`.

    Why: torch keeps compiled graphs per code object, with a small recompile limit; the
    backward has several variants (which incoming gradients exist, which inputs need one, the
    dtype) that would together exceed it. One copy per variant keeps each cache at one graph.
    """
    if key not in _compiled:
        code = fn.__code__.replace(co_name=f"{fn.__name__}_{len(_compiled)}")
        copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        _compiled[key] = torch.compile(copy, dynamic=True, fullgraph=True)
    return _compiled[key]


def _run(fn: Any, tensors: tuple, rest: tuple) -> tuple | None:
    """Call the compiled `fn` on flat views of `tensors`; None (and off from now on) if anything fails."""
    try:
        first = next(t for t in tensors if t is not None)
        key = (fn.__name__, first.dtype, tuple(t is None for t in tensors),
               tuple(r for r in rest if isinstance(r, bool)))
        # flat, detached aliases: no view bases or requires_grad flags for the compiled graph to guard on
        flat = [None if t is None else t.view(-1).detach() for t in tensors]
        with torch.no_grad():
            out = _variant(fn, key)(*flat, *rest)
        return tuple(None if o is None else o.view(first.shape) for o in out)
    except Exception as e:  # no compiler, unsupported backend, ...: the eager kernels are always right
        _state["failed"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        warnings.warn(f"metacl.engine.adamw: compiling the AdamW step failed ({_state['failed']}); "
                      "using the eager kernels", RuntimeWarning, stacklevel=3)
        return None


def forward(p: Tensor, g: Tensor, m: Tensor, v: Tensor, *hyper: float) -> tuple[Tensor, Tensor, Tensor] | None:
    """Compiled `adamw_forward`, or None when the eager kernels must be used."""
    return _run(adamw_forward, (p, g, m, v), hyper)  # type: ignore[return-value]


def backward(gp: Tensor | None, gm: Tensor | None, gv: Tensor | None, g: Tensor, m_new: Tensor, v_new: Tensor,
             *rest: Any) -> tuple | None:
    """Compiled `adamw_backward`, or None when the eager kernels must be used."""
    return _run(adamw_backward, (gp, gm, gv, g, m_new, v_new), rest)


def disable() -> None:
    """Use the eager kernels from now on (a reference for tests, or a machine without a C++ compiler)."""
    _state["enabled"] = False


def enable() -> None:
    _state["enabled"] = True
