"""Strategy options are declared once: the default in `__init__`, help/type in `options`; `--help` shows it."""

import argparse
import inspect

import pytest

import metacl.strategies as strategies
from metacl.strategies.base import Option, Strategy


@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
def test_every_flag_default_is_the_constructor_default(name):
    cls = strategies.REGISTRY[name]
    p = argparse.ArgumentParser(add_help=False)
    cls.add_args(p)
    params = inspect.signature(cls.__init__).parameters
    for a in p._actions:
        assert a.dest in params, f"{name}: --{a.dest} is no keyword of {cls.__name__}.__init__"
        assert a.default == params[a.dest].default, f"{name}: --{a.dest} default {a.default!r} != __init__'s"


def test_options_become_flags_with_the_init_default_and_its_type():
    class Toy(Strategy):
        name = "toy_opts"
        options = {"toy_rate": Option("a rate"), "toy_mode": Option("a mode", choices=("a", "b")),
                   "toy_limit": Option("a limit", type=int)}

        def __init__(self, toy_rate: float = 0.25, toy_mode: str = "a", toy_limit: int | None = None):
            self.rate, self.mode, self.limit = toy_rate, toy_mode, toy_limit

    p = argparse.ArgumentParser(add_help=False)
    Toy.add_args(p)
    ns = p.parse_args(["--toy-rate", "0.5", "--toy-limit", "3"])
    assert (ns.toy_rate, ns.toy_mode, ns.toy_limit) == (0.5, "a", 3)
    s = Toy.from_options(vars(p.parse_args([])))
    assert (s.rate, s.mode, s.limit) == (0.25, "a", None)
    with pytest.raises(SystemExit):
        p.parse_args(["--toy-mode", "c"])

    class Broken(Toy):
        options = {"toy_missing": Option("not a keyword")}

    with pytest.raises(TypeError, match="toy_missing"):
        Broken.add_args(argparse.ArgumentParser(add_help=False))


def test_help_shows_strategy_and_run_defaults(capsys):
    from metacl.cli.main import main

    assert main(["ckl", "run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "EWC penalty strength lambda (default: 1000.0)" in text
    assert "LoRA rank r (default: 8)" in text
    assert "--weight-decay WEIGHT_DECAY default 0" in text
