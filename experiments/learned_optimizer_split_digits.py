"""Split-Digits / Permuted-Digits: the learned optimizer vs SGD, Adam, EWC, LwF, replay (3 seeds).

    OMP_NUM_THREADS=1 python experiments/learned_optimizer_split_digits.py \
        --out docs/results/lo_split_digits [--optimizer-path DIR] [--seeds 0 1 2]

Writes summary.json (per benchmark and method: mean/std of ACC, BWT, FWT over seeds, plus every
run's accuracy matrix) and prints a markdown table. The learned optimizer uses the shipped
default weights unless --optimizer-path is given (a folder or a shipped name: digits, default).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from metacl.benchmarks.split_digits import METHODS, RunConfig, make_benchmark, run_sequence
from metacl.utils import write_json_atomic

BENCHES = [("split", "task"), ("split", "class"), ("permuted", "task")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--optimizer-path", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps-per-task", type=int, default=40)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--learned-lr", type=float, default=1.0, help="multiplier on the learned optimizer's step")
    ap.add_argument("--consolidate-decay", type=float, default=1.0,
                    help="learned: old-task importance kept at each task end (1 = max-accumulation, as trained)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = RunConfig(steps_per_task=args.steps_per_task, optimizer_path=args.optimizer_path,
                    learned_lr=args.learned_lr, consolidate_decay=args.consolidate_decay)
    results: dict = {"command": "python " + " ".join(sys.argv), "config": vars(cfg), "hardware": "CPU, 1 thread",
                     "benchmarks": {}}
    t0 = time.time()
    lines = ["| benchmark | method | ACC | BWT | FWT |", "|---|---|---|---|---|"]
    for bench, scenario in BENCHES:
        key = f"{bench}-{scenario}" if bench == "split" else bench
        results["benchmarks"][key] = {}
        for method in args.methods:
            runs = []
            for seed in args.seeds:
                tasks = make_benchmark(bench, seed=seed, scenario=scenario)
                runs.append({"seed": seed, **run_sequence(tasks, method, seed=seed, cfg=cfg)})
            agg = {}
            for m in ("ACC", "BWT", "FWT"):
                vals = [r[m] for r in runs]
                agg[m] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
            results["benchmarks"][key][method] = {"summary": agg, "runs": runs}
            lines.append(f"| {key} | {method} | " + " | ".join(
                f"{agg[m]['mean']:.3f} ± {agg[m]['std']:.3f}" for m in ("ACC", "BWT", "FWT")) + " |")
            print(lines[-1], flush=True)
    results["seconds"] = round(time.time() - t0, 1)
    results["table_md"] = "\n".join(lines)
    write_json_atomic(f"{args.out}/summary.json", results)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
