"""`optimizer.step()` cost of LearnedOptimizer vs torch AdamW (foreach), interleaved in one process.

    OMP_NUM_THREADS=1 python experiments/bench_lo_step.py --out docs/results/lo_step_cost/summary.json

Why this design: the machine is shared, so the optimizers are timed round-robin in one process
(each round runs every optimizer once, the order rotating), and both the calling thread's CPU
time (`time.thread_time`, insensitive to being descheduled) and wall time are recorded; with
`torch.set_num_threads(1)` the thread's CPU time is all the step's work. Every optimizer has its
own copy of the model and all share one set of gradients (none of them writes to a gradient),
rescaled between rounds so the statistics keep moving. Rows: AdamW (foreach), the learned
optimizer with the shipped weights (MLP head) and with the linear head (`NetConfig(head="linear")`,
untrained weights: the cost does not depend on their values). Ratios use the per-round medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from metacl.optim import LearnedOptimizer, NetConfig
from metacl.utils import write_json_atomic

MODELS = {"8.4M": (1024, 8), "100M": (4096, 6)}  # Linear(width, width) x layers


def _optimizers(params_of, which):
    out = {}
    for name in which:
        ps = params_of(name)
        if name == "adamw":
            out[name] = torch.optim.AdamW(ps, lr=1e-4, foreach=True)
        elif name == "learned_mlp":
            out[name] = LearnedOptimizer.pretrained(ps, total_steps=100)
        elif name == "learned_linear":
            out[name] = LearnedOptimizer(ps, config=NetConfig(head="linear"), total_steps=100)
    return out


def bench(model_name: str, rounds: int, which: list[str]) -> dict:
    width, layers = MODELS[model_name]
    torch.manual_seed(0)
    base = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    grads = [torch.randn_like(p) * 1e-3 for p in base.parameters()]
    models = {}

    def params_of(name):
        m = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
        m.load_state_dict(base.state_dict())
        for p, g in zip(m.parameters(), grads):
            p.grad = g
        models[name] = m
        return list(m.parameters())

    opts = _optimizers(params_of, which)
    for o in opts.values():  # warm-up: allocates state
        o.step()
    cpu = {n: [] for n in opts}
    wall = {n: [] for n in opts}
    names = list(opts)
    for r in range(rounds):
        for g in grads:
            g.mul_(0.5 + torch.rand(()).item())
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0, w0 = time.thread_time(), time.perf_counter()
            opts[n].step()
            cpu[n].append(time.thread_time() - t0)
            wall[n].append(time.perf_counter() - w0)
    n_params = sum(p.numel() for p in base.parameters())
    rows = {n: {"cpu_s_median": statistics.median(cpu[n]), "cpu_s_min": min(cpu[n]),
                "wall_s_median": statistics.median(wall[n]), "wall_s_min": min(wall[n]),
                "cpu_s": cpu[n], "wall_s": wall[n]} for n in names}
    ratios = {}
    if "adamw" in rows:
        for n in names:
            if n != "adamw":
                ratios[n] = {k: rows[n][k] / rows["adamw"][k] for k in ("cpu_s_median", "cpu_s_min", "wall_s_median")}
    return {"model": f"{layers} x Linear({width}, {width})", "params": n_params, "tensors": 2 * layers,
            "rows": rows, "ratio_to_adamw": ratios}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="8.4M,100M", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per model (after one warm-up step)")
    ap.add_argument("--rows", default="adamw,learned_mlp,learned_linear")
    ap.add_argument("--label", default="preliminary (shared machine)")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    which = [r.strip() for r in args.rows.split(",") if r.strip()]
    res = {"command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv), "label": args.label,
           "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "loadavg_before": os.getloadavg(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "models": {}}
    for m in args.models.split(","):
        res["models"][m] = bench(m.strip(), args.rounds, which)
        print(json.dumps({m: res["models"][m]["ratio_to_adamw"]}), flush=True)
    res["loadavg_after"] = os.getloadavg()
    if args.out:
        write_json_atomic(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
