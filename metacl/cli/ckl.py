"""`metacl ckl run | tune | compare | show | strategies | sequence`.

Option precedence (every command, see `metacl.cli.config`): built-in defaults < `--config FILE`
(YAML) < options typed on the command line.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from metacl.errors import MetaclError
from metacl.precision import PRECISIONS

# Parser dests that are not CklConfig fields, and how they map.
_RENAMED = {"strategy": "strategies"}


def _add_run_args(p: argparse.ArgumentParser) -> None:
    from metacl.ckl.config import CklConfig

    d = CklConfig()
    p.add_argument("--model", metavar="PATH", help="base causal LM folder (save_pretrained format)")
    p.add_argument("--data", metavar="DIR", help="folder with tl.jsonl + nf.jsonl (+ tl_val.jsonl), or the official LAMA-ckl folder")
    p.add_argument("--tl", metavar="FILE", help="To-Learn JSONL (overrides --data)")
    p.add_argument("--nf", metavar="FILE", help="Not-To-Forget JSONL (overrides --data)")
    p.add_argument("--tl-val", metavar="FILE", help="held-out TL-like JSONL used only to choose an epoch")
    p.add_argument("--old-corpus", metavar="FILE", help="pre-training text for replay-like strategies (default: <data>/pretrain_corpus.jsonl)")
    p.add_argument("--strategy", nargs="+", metavar="NAME", default=d.strategies,
                   help="one or more strategies, composed (see `metacl ckl strategies`)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"training epochs (default {d.epochs})")
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds, help="seeds; mean ± std over them (default 0)")
    p.add_argument("--out", metavar="DIR", help="output folder (metrics.jsonl, summary.json, table.md, plot.png)")
    p.add_argument("--optimizer", choices=["adamw", "sgd", "learned"], default=d.optimizer, help="default adamw")
    p.add_argument("--optimizer-path", metavar="DIR", help="weights of the learned optimizer: a folder, or a shipped name (default, digits) (default: the shipped default)")
    p.add_argument("--learned-lr", type=float, default=d.learned_lr, help="multiplier on the learned optimizer's step (default 1)")
    p.add_argument("--learned-anchor-lr", type=float, default=d.learned_anchor_lr,
                   help="multiplier on the learned optimizer's pull back to the starting weights alone (linear head; "
                   "default: --learned-lr, as meta-trained)")
    p.add_argument("--learned-pull-scale", type=float, default=d.learned_pull_scale, metavar="X",
                   help="learned optimizer meta-trained with --imp-pull: factor on its importance-weighted pull "
                   "(default 1, as meta-trained)")
    p.add_argument("--learned-prime-docs", type=int, default=d.learned_prime_docs, metavar="N",
                   help="learned optimizer: before training, measure its old-task importance on N documents of the old "
                   "corpus (LearnedOptimizer.prime; for weights meta-trained with --prime-batches; default 0 = off)")
    p.add_argument("--lr", type=float, default=d.lr,
                   help=f"learning rate for adamw/sgd (default {d.lr:g}, a large-model value; small models such as "
                   "metacl's tiny (~37k) and small (2.16M) presets learn at 1e-3, see README)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default 0")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient-norm clip, 0 = off (default 1)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"documents per step (default {d.batch_size})")
    p.add_argument("--max-length", type=int, default=d.max_length,
                   help=f"tokens per training window (default {d.max_length}; clamped to the model's context)")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="probes per forward pass (default 32)")
    p.add_argument("--no-exact-match", dest="exact_match", action="store_false", default=True,
                   help="skip greedy-generation exact match (faster)")
    p.add_argument("--max-items", type=int, default=None, help="use only the first N TL and N NF items (quick runs)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every, metavar="N",
                   help="write OUT/checkpoint every N training steps to resume a killed run (default: once per epoch; 0 = off)")
    p.add_argument("--max-bad-steps", type=int, default=d.max_bad_steps, metavar="N",
                   help=f"stop after N steps skipped for NaN/inf loss or gradients (default {d.max_bad_steps}; 0 = never)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="bf16: autocast forward passes (fp32 weights); default fp32")
    p.add_argument("--patience", type=int, default=d.patience, metavar="N",
                   help="early stop: end a seed's training once tl_val accuracy (the honest protocol's pick) has not "
                   "improved for N epochs (default: off, train every epoch)")
    p.add_argument("--plot-full-axis", action="store_true", default=d.plot_full_axis,
                   help="plot.png: accuracy panels on a fixed [0, 1] axis (default: zoom to the data)")


def _add_strategy_args(p: argparse.ArgumentParser) -> None:
    import metacl.strategies as strategies

    for cls in strategies.REGISTRY.values():
        cls.add_args(p)


def register(sub) -> None:
    p = sub.add_parser("ckl", help="continual knowledge learning: run, show, compare, list strategies, sequences")
    subsub = p.add_subparsers(dest="ckl_command", metavar="COMMAND")

    run = subsub.add_parser("run", help="train a strategy on TL documents, probe TL/NF every epoch",
                            conflict_handler="resolve")
    _add_run_args(run)
    _add_strategy_args(run)
    # `metacl.cli.config.prepare` adds --config, suppresses the defaults and fills `defaults` in
    run.set_defaults(func=functools.partial(cmd_run, defaults={}))

    tn = subsub.add_parser("tune", help="grid over --lr and strategy options, chosen on tl_val only; optionally "
                           "rerun the choice on more seeds", conflict_handler="resolve")
    _add_run_args(tn)
    _add_strategy_args(tn)
    tn.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="one grid axis (repeat for more; the grid is their product): "
                    "lr, weight_decay, learned_lr, learned_anchor_lr, learned_pull_scale, grad_clip, batch_size "
                    "(metacl.ckl.tune.RUN_KEYS) or an option of the chosen strategies, e.g. --grid lr=3e-4,1e-3 "
                    "--grid ewc_lambda=10,100")
    tn.add_argument("--nf-floor", type=float, default=None, metavar="X",
                    help="choose only among points whose NF accuracy at their honest epoch is >= X")
    tn.add_argument("--then-seeds", type=int, nargs="+", default=None, metavar="N",
                    help="run the chosen point on these seeds into OUT/final (a normal ckl run folder)")
    tn.set_defaults(func=cmd_tune)

    cmp_ = subsub.add_parser("compare", help="merge the tables and plots of several runs")
    cmp_.add_argument("runs", nargs="+", metavar="OUT", help="--out folders of `metacl ckl run`")
    cmp_.add_argument("--out", metavar="DIR", default=None, help="write table.md and plot.png here")
    cmp_.add_argument("--full-axis", action="store_true", help="accuracy panels on a fixed [0, 1] axis (default: zoom to the data)")
    cmp_.set_defaults(func=cmd_compare)

    show = subsub.add_parser("show", help="print a finished or running run's table and where its plots are")
    show.add_argument("run_dir", metavar="OUT", help="--out folder of `metacl ckl run`")
    show.add_argument("--plot", metavar="FILE", default=None, help="also draw the epochs evaluated so far into FILE (.png)")
    show.add_argument("--full-axis", action="store_true", help="with --plot: accuracy panels on a fixed [0, 1] axis")
    show.set_defaults(func=cmd_show)

    st = subsub.add_parser("strategies", help="list every registered strategy, or show one's formula and options")
    st.add_argument("name", nargs="?", metavar="NAME",
                    help="print this strategy's formula, options with defaults and how it was adapted to LMs / CKL")
    st.set_defaults(func=cmd_strategies)

    from metacl.cli.ckl_sequence import register_cli

    register_cli(subsub)
    p.set_defaults(func=lambda args: p.print_help())


def merge_options(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """defaults < YAML (--config) < typed options (`metacl.cli.config.merge` with the run parser's options)."""
    from metacl.cli.config import merge

    spec = given.get("_config_spec")
    actions = spec[2] if spec else {k: argparse.Action([], k) for k in defaults}
    return merge(defaults, given, actions, "ckl run")


def config_from_options(opts: dict[str, Any]):
    """A `CklConfig` from merged options: strategy options go into `strategy_options`."""
    from metacl.ckl.config import CklConfig
    from metacl.cli.config import strategy_option_names

    names = list(opts.get("strategy") or [])
    own = set(strategy_option_names(names))
    fields = CklConfig.field_names()
    kw: dict[str, Any] = {"strategies": names,
                          "strategy_options": {k: opts[k] for k in sorted(own) if k in opts}}
    for k, v in opts.items():
        if k in fields and k not in ("strategies", "strategy_options"):
            kw[k] = v
    for k in ("model", "out"):
        kw[k] = kw.get(k) or ""
    try:
        cfg = CklConfig(**kw)
    except TypeError as e:  # pragma: no cover - guarded by merge_options
        raise MetaclError(f"bad ckl run options ({e}); see `metacl ckl run --help`") from e
    for k in ("epochs", "batch_size", "max_length", "eval_batch_size", "max_bad_steps") + (
            ("ckpt_every",) if cfg.ckpt_every is not None else ()) + (("patience",) if cfg.patience is not None else ()):
        try:
            setattr(cfg, k, int(getattr(cfg, k)))
        except (TypeError, ValueError) as e:
            raise MetaclError(f"option {k} must be an integer, got {getattr(cfg, k)!r}") from e
    try:
        cfg.seeds = [int(s) for s in cfg.seeds]
        cfg.lr, cfg.weight_decay = float(cfg.lr), float(cfg.weight_decay)
    except (TypeError, ValueError) as e:
        raise MetaclError(f"seeds must be integers and lr/weight_decay numbers ({e})") from e
    return cfg.validate()


def cmd_run(args: argparse.Namespace, defaults: dict[str, Any]) -> int:
    from metacl.ckl.protocol import run_ckl

    cfg = config_from_options(vars(args))  # defaults and --config already merged (metacl.cli.config.resolve)
    summary = run_ckl(cfg)
    from pathlib import Path

    if summary.get("rank", 0) != 0:  # data-parallel ranks other than 0 write and print nothing
        return 0
    print((Path(cfg.out) / "table.md").read_text(), end="")
    for seed, st in (summary.get("stopped") or {}).items():
        print(f"seed {seed}: {st['reason']} (trained {st['epoch']} of {cfg.epochs} epochs)")
    print(f"wrote {cfg.out}/metrics.jsonl, summary.json, table.md, plot.png")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """`ckl tune`: `--seeds` are the tuning seeds, `--out` the tune folder (points under OUT/configs/)."""
    from pathlib import Path

    from metacl.ckl.tune import tune

    opts = vars(args)
    cfg = config_from_options({**opts, "out": opts.get("out") or ""})
    result = tune(cfg, list(opts.get("grid") or []), cfg.out, nf_floor=opts.get("nf_floor"),
                  then_seeds=opts.get("then_seeds"))
    print((Path(cfg.out) / "tune.md").read_text(), end="")
    print(f"chosen flags: {result['chosen_flags'] or '(the base options)'}")
    if result.get("final"):
        print((Path(cfg.out) / "final" / "table.md").read_text(), end="")
    print(f"wrote {cfg.out}/tune.json, tune.md" + (f", final/ (seeds {' '.join(map(str, result['final_seeds']))})"
                                                   if result.get("final") else ""))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from metacl.ckl.report import compare

    if args.out:  # its table.md / plot.png would overwrite a run's own (H6)
        from metacl.utils import check_out_kind

        check_out_kind(args.out, "ckl compare")
    print(compare(args.runs, args.out, full_axis=args.full_axis), end="")
    if args.out:
        print(f"wrote {args.out}/table.md and {args.out}/plot.png")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from metacl.ckl.show import show_run

    print(show_run(args.run_dir, plot=args.plot, full_axis=args.full_axis), end="")
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    import metacl.strategies as strategies

    if getattr(args, "name", None):
        from metacl.strategies.cards import describe

        print(describe(args.name), end="")
        return 0

    width = max(len(n) for n in strategies.REGISTRY)
    for name in sorted(strategies.REGISTRY):
        cls = strategies.REGISTRY[name]
        tag = "" if cls.trains else " [no training]"
        print(f"{name:<{width}}  {cls.description}{tag}")
    return 0
