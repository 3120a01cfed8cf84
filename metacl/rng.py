"""Every global random stream a run touches, as JSON, for exact resume.

Why: a resumed run must be the same computation as an uninterrupted one. Python's and
torch's streams are covered by `metacl.checkpoint.rng_state`; this adds numpy's (scikit-learn
and some data code draw from it) and CUDA's when present. Dedicated `torch.Generator`s are
saved by their owners next to the tensors they drive.
"""

from __future__ import annotations

from typing import Any

import torch

from metacl.checkpoint import rng_state, set_rng_state


def all_rng_state() -> dict[str, Any]:
    state = rng_state()
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_all_rng_state(state: dict[str, Any]) -> None:
    set_rng_state(state)
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
