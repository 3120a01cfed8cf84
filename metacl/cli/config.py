"""`--config YAML` for every command, `--help` that shows every default, and the resolved config on disk.

Why here, once: each command declares its options with argparse as usual; `prepare(parser)`
then rewrites every leaf (sub)command the same way, so no command can forget one of the three:

- `--config FILE`: a YAML mapping with the same keys as the command's flags (`epochs`,
  `ewc-lambda` or `ewc_lambda`, ...). Precedence: built-in defaults < YAML < typed flags. To know
  which flags were typed, every option's default becomes `SUPPRESS` after it is declared (the
  real defaults are kept aside); `required` options are checked after the merge, so a YAML
  file may provide them. A misspelt key is one error line naming the closest flag.
- `--help` shows the default of every option that has one.
- After a command succeeds, `OUT/resolved_config.yaml` holds every option it ran with (the
  merged values), so `metacl <command> --config OUT/resolved_config.yaml` repeats the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from metacl.errors import MetaclError

RESOLVED = "resolved_config.yaml"
# YAML keys accepted for a flag whose dest differs (`ckl run --strategy` takes `strategies:` too).
ALIASES = {"strategies": "strategy"}
_SKIP = {"help", "config", "func", "version"}


def _leaf_parsers(parser: argparse.ArgumentParser):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
        return
    for p in dict.fromkeys(subs[0].choices.values()):
        yield from _leaf_parsers(p)


def _option_actions(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.dest not in _SKIP and not isinstance(a, argparse._SubParsersAction)]


def prepare(parser: argparse.ArgumentParser) -> None:
    """Give every leaf command `--config`, defaults in `--help`, and merge-aware defaults."""
    for p in _leaf_parsers(parser):
        if p.get_default("func") is None:
            continue
        if not any(a.dest == "config" for a in p._actions):
            p.add_argument("--config", metavar="YAML", default=None,
                           help="YAML file with the same keys as this command's options (typed options win)")
        defaults: dict[str, Any] = {}
        required: dict[str, str] = {}
        for a in _option_actions(p):
            if a.default is not argparse.SUPPRESS:
                defaults[a.dest] = a.default
            if a.help is not argparse.SUPPRESS and a.default is not None and a.option_strings \
                    and a.default is not argparse.SUPPRESS and not isinstance(a.default, bool) and "default" not in (a.help or ""):
                shown = " ".join(map(str, a.default)) if isinstance(a.default, (list, tuple)) else str(a.default)
                shown = f"default: {shown}".replace("%", "%%")  # a literal: the real default is suppressed below
                a.help = f"{a.help} ({shown})" if a.help else shown
            if a.required and a.option_strings:
                required[a.dest] = a.option_strings[0]
                a.required = False
            a.default = argparse.SUPPRESS
        for a in p._actions:
            if a.dest == "config":
                a.default = argparse.SUPPRESS
        p.set_defaults(_config_spec=(defaults, required, {a.dest: a for a in _option_actions(p)}))
        fn = p.get_default("func")
        if isinstance(getattr(fn, "keywords", None), dict) and isinstance(fn.keywords.get("defaults"), dict):
            fn.keywords["defaults"].update(defaults)  # a command that wants the real defaults (ckl run) gets them


def _coerce(action: argparse.Action, value: Any, where: str) -> Any:
    """A YAML value as the flag would have parsed it: lists for nargs, the flag's type, its choices."""
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if many and not isinstance(value, list):
        value = [value]
    conv = action.type
    if conv is not None and value is not None:
        kind = {int: "an integer", float: "a number"}.get(conv, f"a valid {getattr(conv, '__name__', 'value')}")
        for v in value if many else [value]:
            try:
                conv(v)
            except (TypeError, ValueError):
                raise MetaclError(f"{where}: option {action.dest} must be {kind}, got {v!r}") from None
        value = [conv(v) for v in value] if many else conv(value)
    if action.choices is not None and value is not None:
        for v in value if many else [value]:
            if v not in action.choices:
                raise MetaclError(f"{where}: {v!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def strategy_option_names(names: list[str]) -> list[str]:
    """The `dest` names of every option the given strategies declare in `add_args`."""
    from metacl.strategies.base import get_strategy

    dests: list[str] = []
    for n in names:
        p = argparse.ArgumentParser(add_help=False)
        get_strategy(n).add_args(p)
        dests += [a.dest for a in p._actions]
    return dests


def did_you_mean(key: str, allowed) -> str:
    """' (did you mean epochs?)' for a misspelt key, '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(key, sorted(allowed), n=3, cutoff=0.6)
    if not close:  # same first word, e.g. `taalm_path` -> taalm_predictor
        close = sorted(a for a in allowed if a.split("_")[0] == key.split("_")[0])[:3]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def load_yaml_options(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file, keys normalised to underscores (`ewc-lambda` → `ewc_lambda`)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise MetaclError(f"config file {p} does not exist; pass an existing YAML file to --config")
    try:
        with open(p) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise MetaclError(f"config file {where} is not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise MetaclError(f"config file {p} must hold a mapping of option: value, not a {type(raw).__name__}")
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def merge(defaults: dict[str, Any], given: dict[str, Any], actions: dict[str, argparse.Action],
          command: str) -> dict[str, Any]:
    """defaults < YAML (`given["config"]`) < the typed options in `given`."""
    given = {k: v for k, v in given.items() if k not in ("_config_spec", "_resolved")}
    opts = dict(defaults)
    cfg_file = given.pop("config", None)
    if cfg_file:
        allowed = set(actions) | {k for k, v in ALIASES.items() if v in actions}
        for k, v in load_yaml_options(cfg_file).items():
            k = ALIASES.get(k, k) if k not in actions else k
            if k not in actions:
                raise MetaclError(f"config file {cfg_file}: unknown key {k!r}{did_you_mean(k, allowed)}; use the "
                                  f"option names of `metacl {command}` (see metacl {command} --help)")
            opts[k] = _coerce(actions[k], v, f"config file {cfg_file}")
    opts.update(given)
    return opts


def resolve(args: argparse.Namespace, command: str) -> argparse.Namespace:
    """The parsed namespace with defaults and the --config file merged in; unknown YAML keys are one error line."""
    spec = getattr(args, "_config_spec", None)
    if spec is None:
        return args
    defaults, required, actions = spec
    opts = merge(defaults, vars(args), actions, command)
    missing = [flag for dest, flag in required.items() if opts.get(dest) is None]
    if missing:
        raise MetaclError(f"{command}: the following arguments are required: {', '.join(missing)}, as options or "
                          f"--config keys (see metacl {command} --help)")
    ns = argparse.Namespace(**opts)
    ns._resolved = {k: opts[k] for k in actions if k in opts}
    return ns


def record(args: argparse.Namespace) -> None:
    """Write OUT/resolved_config.yaml (every option the command ran with) when it has an --out folder."""
    resolved = getattr(args, "_resolved", None)
    out = resolved.get("out") if resolved else None
    import os

    if not out or not Path(out).is_dir() or int(os.environ.get("RANK", "0") or 0) != 0:
        return

    import yaml

    plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(resolved.items())}
    path = Path(out) / RESOLVED
    tmp = path.with_name(f".{RESOLVED}.tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(plain, sort_keys=True))
    os.replace(tmp, path)
