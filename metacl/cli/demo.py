"""`metacl demo`: the whole pipeline on a CPU in minutes, as a list of resumable steps.

    world    → generate a fictional world v2 (old facts, new facts, held-out probes) out/world/
    base_lm  → pretrain the `small` LM on the old world's corpus               out/base_lm/
    finetune → `ckl run --strategy finetune` on the new facts                  out/runs/finetune/
    lora     → `ckl run --strategy lora`                                       out/runs/lora/
    token_weighter → meta-train the TAALM token weighter (when taalm is run)   out/token_weighter/
    taalm    → `ckl run --strategy taalm --taalm-predictor out/token_weighter/best`  out/runs/taalm/
    compare  → one table (printed, out/table.md) and one plot (out/plot.png)

Why steps: each one writes its outputs into its own folder and is skipped when a marker file
there already exists, so a demo that was interrupted resumes where it stopped, and a later
meta-learner (token-weighting meta-training, then a `taalm` run) is one more `Step` in `steps()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Learning rates per strategy for the demo's base LM, each the best of a small grid on the
# world's tl_val split (finetune: 3e-4, 1e-3; lora: 1e-3, 3e-3, 1e-2; seed 0, 8 epochs), chosen
# on the 0.9M `small` preset of before issue 20 (docs/results/ckl_finetune_lora.md) and not
# re-tuned for the 2.16M `small` of issue 20.
DEMO_LR = {"finetune": 1e-3, "lora": 1e-3}


@dataclass
class Step:
    name: str
    marker: Path                      # the step is done when this file exists
    run: Callable[[], None]
    always: bool = False              # cheap summary steps rerun every time
    info: dict = field(default_factory=dict)


def steps(args) -> list[Step]:
    out = Path(args.out)
    world, base = out / "world", out / "base_lm"

    def make_world() -> None:
        # the same world `metacl data world` writes by default (v2: no probe verbatim in any training
        # text); --world-version 1 reproduces demos made before issue 20
        if args.world_version == 1:
            from metacl.data.world import write_world

            meta = write_world(world, args.entities, args.seed)
        else:
            from metacl.data.world_v2 import write_world_v2

            meta = write_world_v2(world, args.entities, args.seed)
        print("  " + ", ".join(f"{k} {v}" for k, v in meta["counts"].items()))

    def make_base() -> None:
        from metacl.models.pretrain import pretrain

        s = pretrain([world / "pretrain_corpus.jsonl"], args.size, base, seed=args.seed, steps=args.pretrain_steps)
        print(f"  {s['parameters']:,} parameters, {s['tokens']:,} corpus tokens, final loss {s['final_loss']:.3f}, "
              f"{s['seconds']:.0f}s")

    def ckl(strategy: str) -> Callable[[], None]:
        def run() -> None:
            from metacl.ckl.config import CklConfig
            from metacl.ckl.protocol import run_ckl

            options = {"taalm_predictor": str(out / "token_weighter" / "best")} if strategy == "taalm" else {}
            cfg = CklConfig(model=str(base), data=str(world), out=str(out / "runs" / strategy), strategies=[strategy],
                            strategy_options=options,
                            epochs=args.epochs, seeds=list(args.seeds), lr=DEMO_LR.get(strategy, 1e-3),
                            batch_size=8, max_length=256)
            run_ckl(cfg, log=lambda line: print("  " + line))

        return run

    def compare() -> None:
        from metacl.ckl.report import compare as merge

        dirs = [out / "runs" / s for s in args.strategies]
        print(merge(dirs, out), end="")
        print(f"wrote {out / 'table.md'} and {out / 'plot.png'}")

    def make_token_weighter() -> None:  # issue 5: meta-train the TAALM-style weighter the `taalm` run uses
        from metacl.cli.meta_token_weighting import demo_meta_train

        best = demo_meta_train(base, world, out / "token_weighter", seed=args.seed, steps=args.meta_steps)
        print(f"  token weighter: {best}")

    tw_step = [Step("token_weighter", out / "token_weighter" / "best" / "token_weighter.json", make_token_weighter)]
    return [
        Step("world", world / "world.json", make_world),
        Step("base_lm", base / "pretrain.json", make_base),
        *(tw_step if "taalm" in args.strategies else []),
        *[Step(s, out / "runs" / s / "summary.json", ckl(s)) for s in args.strategies],
        Step("compare", out / "table.md", compare, always=True),
    ]


def register(sub) -> None:
    p = sub.add_parser("demo", help="end to end on a CPU: world, base LM, token weighter; finetune, lora and taalm "
                       "compared in one table and plot")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo); rerun to resume")
    p.add_argument("--entities", type=int, default=200, help="people in the generated world (default 200)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the ckl runs (default 0)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs on the new facts (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the world and of pretraining (default 0)")
    p.add_argument("--size", default="small", help="base LM preset (default small)")
    p.add_argument("--world-version", type=int, choices=[1, 2], default=2,
                   help="generated world: 2 (default, as `metacl data world`) or 1 (demos made before issue 20)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the preset's pretraining steps")
    p.add_argument("--strategies", nargs="+", default=["finetune", "lora", "taalm"],
                   help="strategies to compare (default finetune lora taalm; taalm meta-trains a token weighter first)")
    p.add_argument("--meta-steps", type=int, default=30, help="token-weighter meta-training steps for taalm (default 30)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from metacl.errors import MetaclError

    if args.epochs < 1:
        raise MetaclError(f"--epochs must be >= 1, got {args.epochs}")
    if args.entities < 20:
        raise MetaclError(f"--entities must be at least 20 for a world with every split, got {args.entities}")
    t0 = time.time()
    todo = steps(args)
    for i, step in enumerate(todo, 1):
        if step.marker.exists() and not step.always:
            print(f"[{i}/{len(todo)}] {step.name}: done already ({step.marker}), skipped")
            continue
        print(f"[{i}/{len(todo)}] {step.name} ...", flush=True)
        t = time.time()
        step.run()
        print(f"[{i}/{len(todo)}] {step.name}: {time.time() - t:.0f}s", flush=True)
    print(f"demo finished in {time.time() - t0:.0f}s; outputs in {args.out}")
    return 0
