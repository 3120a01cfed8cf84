"""`metacl ckl sequence`: the task-sequence benchmark (`metacl.benchmarks.sequence`) from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from metacl.benchmarks.sequence import SequenceConfig, run_sequence
from metacl.ckl.optimizers import OPTIMIZERS
from metacl.precision import PRECISIONS


def register_cli(ckl_subparsers) -> None:
    """Add `metacl ckl sequence` (called by `metacl.cli.ckl`)."""
    d = SequenceConfig()
    p = ckl_subparsers.add_parser("sequence", help="learn a sequence of world updates; accuracy matrix, ACC/BWT/FWT",
                                  conflict_handler="resolve")
    p.add_argument("--model", metavar="PATH", required=True, help="base LM pretrained on the world's pretrain_corpus")
    p.add_argument("--world", metavar="DIR", required=True, help="world folder written by `metacl data world`")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (summary.json, table.md, heat-maps)")
    p.add_argument("--strategies", nargs="+", default=d.strategies, metavar="NAME",
                   help="strategies to compare, one run each; a+b composes (default finetune)")
    p.add_argument("--periods", type=int, default=d.periods, help=f"number of world updates (default {d.periods})")
    p.add_argument("--facts-per-period", type=int, default=d.facts_per_period, help=f"default {d.facts_per_period}")
    p.add_argument("--data-seed", type=int, default=d.data_seed, help="seed of the generated periods (default 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds, help="training seeds (default 0)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs per period (default {d.epochs})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="0 = off (default 1)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--max-nf", type=int, default=None, help="score only the first N old-world probes (quick runs)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="default adamw; other optimizers' rows are named <strategy>@<optimizer>")
    p.add_argument("--optimizer-path", metavar="DIR", default=None,
                   help="weights of the learned optimizer (default: shipped weights)")
    p.add_argument("--learned-lr", type=float, default=d.learned_lr,
                   help="multiplier on the learned optimizer's step (default 1)")
    p.add_argument("--learned-anchor-lr", type=float, default=d.learned_anchor_lr, metavar="X",
                   help="learned optimizer, linear head: apply its pull back to the starting weights at X "
                        "instead of --learned-lr (default: --learned-lr)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="bf16: autocast forward passes (fp32 weights)")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every, metavar="N",
                   help="write OUT/runs/<strategy>/checkpoint_seed_<s> every N training steps so a killed run resumes "
                   "(default: once per epoch; 0 = off)")
    p.add_argument("--max-bad-steps", type=int, default=d.max_bad_steps, metavar="N",
                   help="stop after N steps skipped for NaN/inf loss or gradients (0 = never)")
    import metacl.strategies as strategies

    for cls in strategies.REGISTRY.values():
        cls.add_args(p)
    p.set_defaults(func=cmd_sequence)


def config_from_args(args: argparse.Namespace) -> SequenceConfig:
    from metacl.cli.config import strategy_option_names

    names = [n for spec in args.strategies for n in spec.split("+")]
    own = set(strategy_option_names(names))
    opts = {k: v for k, v in vars(args).items() if k in own}
    fields = set(SequenceConfig.__dataclass_fields__)
    kw = {k: v for k, v in vars(args).items() if k in fields and k != "strategy_options"}
    return SequenceConfig(strategy_options=opts, **kw)


def cmd_sequence(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    summary = run_sequence(cfg)
    if summary.get("rank", 0) != 0:  # data-parallel ranks other than 0 write and print nothing
        return 0
    print((Path(cfg.out) / "table.md").read_text(), end="")
    print(f"wrote {cfg.out}/summary.json, table.md, heatmap_<strategy>.png")
    return 0
