"""`metacl meta-train token-weighting|optimizer`: one subcommand per meta-learner (modules in this folder)."""

from __future__ import annotations

import importlib

SUBCOMMANDS = [
    "metacl.cli.meta_token_weighting",  # token-weighting
    "metacl.cli.meta_optimizer",       # optimizer
]


def register(sub) -> None:
    p = sub.add_parser("meta-train", help="meta-train a meta-learner (token-weighting, optimizer)")
    subsub = p.add_subparsers(dest="meta_command", metavar="META_LEARNER")
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(subsub)
    p.set_defaults(func=lambda args: p.print_help())
