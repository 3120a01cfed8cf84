"""`metacl` entry point.

Each command module exposes `register(subparsers)`; it adds its parser and sets
`func=<callable(args) -> int | None>`. Heavy imports (torch, transformers) happen inside the
command functions so that `metacl --help` stays fast.

A `MetaclError` anywhere becomes one line on stderr and exit code 2; nothing else is printed.
Command-line mistakes (unknown option, bad value, unknown command) get the same treatment:
argparse's usage block is replaced by one line naming the command and where to find its help,
`metacl: error: <command>: <message> (see metacl <command> --help)`, so scripts and people see
the same single line whichever layer refused the input.
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
    "metacl.cli.weights",    # metacl weights show
    "metacl.cli.visualize",  # metacl visualize (token weights of a document)
    "metacl.cli.demo",       # metacl demo (the README main command)
]
# The top-level command each module registers and its one-line help, repeated here so that
# `metacl --help`, `--version` and a mistyped command list the commands without importing the
# command modules (they pull in torch and transformers: seconds of start-up). Only the command
# actually typed is registered for real. tests/test_ux.py checks that this table and the
# modules' own `add_parser(..., help=...)` agree.
COMMAND_HELP = {
    "data": ("metacl.cli.data", "generate data sets (metacl data world)"),
    "pretrain": ("metacl.cli.pretrain", "pretrain a small Llama-style base LM (and its tokenizer) from scratch"),
    "ckl": ("metacl.cli.ckl", "continual knowledge learning: run, show, compare, list strategies, sequences"),
    "meta-train": ("metacl.cli.meta_train", "meta-train a meta-learner (token-weighting, optimizer)"),
    "weights": ("metacl.cli.weights", "inspect a token weighter's weights on documents"),
    "visualize": ("metacl.cli.visualize", "shade a document's tokens by a token weighter's weights"),
    "demo": ("metacl.cli.demo", "end to end on a CPU: world, base LM, token weighter; finetune, lora and taalm "
             "compared in one table and plot"),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one stderr line and exit code 2 (subparsers inherit it)."""

    def command(self) -> str:
        """'ckl run' for the parser of `metacl ckl run`; '' for the top-level parser."""
        parts = self.prog.split()
        return " ".join(parts[1:])

    def error(self, message: str) -> None:
        cmd = self.command()
        where = f"{cmd}: " if cmd else ""
        see = f"metacl {cmd} --help" if cmd else "metacl --help"
        message = " ".join(message.split())  # argparse messages may span lines
        self.exit(2, f"metacl: error: {where}{message} (see {see})\n")


def _deepest_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command the user chose, e.g. that of `metacl ckl run`."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if not subs or chosen not in subs[0].choices:
            return parser
        parser = subs[0].choices[chosen]


def _typed_command(argv: list[str]) -> str | None:
    """The top-level command in `argv` (its first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `metacl` parser. With `argv`, only the command typed there is registered for real (the
    others are help-only placeholders, see COMMAND_HELP); without, every command is."""
    parser = _Parser(
        prog="metacl",
        description="Meta-learning for continual learning of language models.",
    )
    from metacl import __version__

    parser.add_argument("--version", action="version", version=f"metacl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    typed = _typed_command(argv) if argv is not None else None
    lazy = argv is not None and all(name in {m for m, _ in COMMAND_HELP.values()} for name in COMMAND_MODULES)
    for name in COMMAND_MODULES:
        command = next((c for c, (m, _) in COMMAND_HELP.items() if m == name), None)
        if lazy and command != typed:
            sub.add_parser(command, help=COMMAND_HELP[command][1])
        else:
            importlib.import_module(name).register(sub)
    from metacl.cli.config import prepare

    prepare(parser)  # --config, defaults in --help, resolved config for every command
    return parser


def resume_hint(args: argparse.Namespace) -> str:
    """What to do after Ctrl-C, for the command that was stopped (each resumes its own way)."""
    cmd = getattr(args, "command", None)
    if cmd == "meta-train":
        return "rerun the same command with --resume to continue from OUT/checkpoint"
    if cmd == "demo" or (cmd == "ckl" and getattr(args, "ckl_command", None) in ("run", "sequence", "tune")):
        return "rerun the same command to resume (finished seeds and steps are kept)"
    if cmd == "pretrain":
        return "pretraining does not resume: rerun the same command to start it again"
    return "rerun the same command"


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0 ok, 2 bad input, 130 interrupted).

    Returns instead of exiting so tests can call it in-process; argparse's own exits (--help,
    --version, a refused option) are turned into return codes too.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # name the subcommand whose options were wrong, not the top-level parser
            _deepest_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from metacl.cli.config import record, resolve
    from metacl.errors import MetaclError

    try:
        args = resolve(args, _deepest_parser(parser, args).command())
        rc = args.func(args)
        if not rc:
            record(args)
    except MetaclError as e:
        print(f"metacl: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"metacl: interrupted; {resume_hint(args)}", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
