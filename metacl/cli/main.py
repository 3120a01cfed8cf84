"""`metacl` entry point.

Each command module exposes `register(subparsers)`; it adds its parser and sets
`func=<callable(args) -> int | None>`. Heavy imports (torch, transformers) happen inside the
command functions so that `metacl --help` stays fast.

A `MetaclError` anywhere becomes one line on stderr and exit code 2; nothing else is printed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Command modules, in help order.
COMMAND_MODULES = [
    "metacl.cli.data",       # metacl data world
    "metacl.cli.pretrain",   # metacl pretrain
    "metacl.cli.ckl",        # metacl ckl run | compare | strategies | sequence
    "metacl.cli.meta_train", # metacl meta-train token-weighting | optimizer
    "metacl.cli.demo",       # metacl demo (the README main command)
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="metacl",
        description="Meta-learning for continual learning of language models.",
    )
    from metacl import __version__

    parser.add_argument("--version", action="version", version=f"metacl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from metacl.errors import MetaclError

    try:
        rc = args.func(args)
    except MetaclError as e:
        print(f"metacl: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("metacl: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
