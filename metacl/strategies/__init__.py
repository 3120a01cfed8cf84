"""Continual-learning strategies. Importing this package registers every built-in one.

Each strategy is one small module. To add one: write `metacl/strategies/<name>.py` with a
`@register`-decorated `Strategy` subclass, and import it below.
"""

from metacl.strategies.base import REGISTRY, Strategy, TrainContext, get_strategy, register  # noqa: F401

import importlib as _importlib

# Built-in strategies, one module each. A module listed here that does not exist yet is skipped
# so that the package imports while strategies are being added.
_BUILTIN = [
    "finetune", "lora",                                    # plain references
    "taalm", "oracle_weights",                              # token weighting
    "mix_review", "recadam", "k_adapter", "rho1",           # TAALM comparison set
    "ewc", "lwf", "replay", "agem", "ncl", "icl",           # regularisation, replay, ICL
    "spg", "das", "osft", "olora", "progressive", "tasl",   # soft masking, subspaces, architecture
]
for _m in _BUILTIN:
    try:
        _importlib.import_module(f"metacl.strategies.{_m}")
    except ModuleNotFoundError as _e:
        if _e.name != f"metacl.strategies.{_m}":
            raise
