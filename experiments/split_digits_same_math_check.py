"""Split-Digits EWC/LwF before vs after routing them through the strategies' code (issue 14).

Loads `metacl/benchmarks/split_digits.py` as it was at git ref BEFORE (its own EWC penalty and
KL) next to the current module (QuadraticAnchor.penalty, engine.losses.distill_kl), runs ewc
and lwf on one config with each, and prints max |R_before - R_after| and the max difference of
the per-step training loss per method as JSON.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python experiments/split_digits_same_math_check.py [--before REF]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def load_old(ref: str):
    src = subprocess.run(["git", "show", f"{ref}:metacl/benchmarks/split_digits.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "split_digits_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("split_digits_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="d5e1442")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from metacl.benchmarks import split_digits as new

    old = load_old(a.before)
    tasks = new.make_benchmark("split", seed=a.seed)
    out = {"before": a.before, "benchmark": "split", "tasks": len(tasks), "steps_per_task": a.steps, "seed": a.seed}
    for method in ("ewc", "lwf"):
        cfg = new.RunConfig(steps_per_task=a.steps)
        l_old: list[float] = []
        l_new: list[float] = []
        r_old = old.run_sequence(tasks, method, seed=a.seed, cfg=old.RunConfig(steps_per_task=a.steps),
                                 on_step=lambda s, v: l_old.append(v))["R"]
        r_new = new.run_sequence(tasks, method, seed=a.seed, cfg=cfg, on_step=lambda s, v: l_new.append(v))["R"]
        diffs = [abs(x - y) for ro, rn in zip(r_old, r_new) for x, y in zip(ro, rn)]
        # R is a coarse count of correct test images; the per-step training loss shows any drift finer
        ldiff = [abs(x - y) for x, y in zip(l_old, l_new)]
        out[method] = {"max_abs_diff_R": max(diffs), "entries_changed": sum(d > 0 for d in diffs),
                       "max_abs_diff_train_loss": max(ldiff), "steps": len(ldiff),
                       "R_before": r_old, "R_after": r_new}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
