"""Continual-learning strategies. Importing this package registers every built-in one.

Each strategy is one small module. To add one: write `metacl/strategies/<name>.py` with a
`@register`-decorated `Strategy` subclass, and add it to the import below.
"""

from metacl.strategies.base import REGISTRY, Strategy, TrainContext, get_strategy, register  # noqa: F401

# Built-in strategies, one module each; importing a module registers its strategy.
from metacl.strategies import (  # noqa: E402,F401
    finetune, lora,                                    # plain references
    taalm, oracle_weights, salient_span,               # token weighting
    mix_review, recadam, k_adapter, rho1,              # TAALM comparison set
    ewc, lwf, replay, agem, ncl, icl,                  # regularisation, replay, ICL
    spg, das, osft, olora, progressive, tasl,          # soft masking, subspaces, architecture
)
