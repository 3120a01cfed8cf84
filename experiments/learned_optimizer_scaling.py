"""Step time and memory of LearnedOptimizer vs torch AdamW on a large stack of Linear layers.

    OMP_NUM_THREADS=2 python experiments/learned_optimizer_scaling.py --width 4096 --layers 6 \
        --out docs/results/lo_scaling

Each optimizer runs in its own subprocess (so peak RSS is its own): build the model, one
warm-up step, then `--steps` timed steps of forward + backward + optimizer.step(). Reports the
mean optimizer.step() time, the mean full-step time, the exact bytes of optimizer state, and
the process peak RSS. Why a Linear stack: it isolates the optimizer's per-parameter cost
(O(P * hidden)) from model-specific compute; T (tensors) stays small, so attention is negligible.

Before/after comparisons of metacl versions: put the other version first on PYTHONPATH (the
workers inherit it; `metacl_file` in each row says which copy ran) and give it a `--label`.
The 1-minute load average is recorded around each worker, because this CPU is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torch import nn

from metacl.utils import write_json_atomic


def worker(opt_name: str, width: int, layers: int, steps: int, batch: int, chunk_size: int | None = None,
           profile: int = 0) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    n_params = sum(p.numel() for p in model.parameters())
    if opt_name == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    else:
        from metacl.optim import LearnedOptimizer

        kw = {"chunk_size": chunk_size} if chunk_size else {}
        opt = LearnedOptimizer.pretrained(model.parameters(), total_steps=100, **kw)
    x = torch.randn(batch, width)
    step_t, full_t = [], []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if i > 0:  # the first step allocates state
            step_t.append(t2 - t1)
            full_t.append(t2 - t0)
    if profile:  # one more step under torch.profiler: where does optimizer.step() spend its time?
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        with torch.profiler.profile() as prof:
            opt.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile), file=sys.stderr)
    state_bytes = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    return {
        "optimizer": opt_name, "params": n_params, "tensors": len(list(model.parameters())),
        "step_s": sum(step_t) / steps, "fwd_bwd_step_s": sum(full_t) / steps,
        "state_MiB": state_bytes / 2**20, "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(), "chunk_size": getattr(opt, "chunk_size", None),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--chunk-size", type=int, default=None, help="LearnedOptimizer chunk_size (default: its own)")
    ap.add_argument("--only", choices=("adamw", "learned"), default=None, help="run one optimizer only")
    ap.add_argument("--profile", type=int, default=0, help="print the top N ops of one profiled step (stderr)")
    ap.add_argument("--label", default="", help="free text stored in the summary (e.g. 'before', 'after')")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        row = worker(args.worker, args.width, args.layers, args.steps, args.batch, args.chunk_size, args.profile)
        import metacl

        row["metacl_file"] = metacl.__file__
        print(json.dumps(row))
        return 0
    rows = []
    for name in ((args.only,) if args.only else ("adamw", "learned")):
        cmd = [sys.executable, __file__, "--worker", name, "--width", str(args.width), "--layers", str(args.layers),
               "--steps", str(args.steps), "--batch", str(args.batch)]
        if args.chunk_size:
            cmd += ["--chunk-size", str(args.chunk_size)]
        if args.profile:
            cmd += ["--profile", str(args.profile)]
        load_before = os.getloadavg()[0]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        if args.profile:
            print(res.stderr, file=sys.stderr)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        rows[-1]["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        print(rows[-1], flush=True)
    env = "".join(f"{k}={os.environ[k]} " for k in ("PYTHONPATH", "OMP_NUM_THREADS") if k in os.environ)
    out = {"command": f"{env}python " + " ".join(sys.argv),
           "hardware": "CPU (shared 2-core machine)", "label": args.label, "rows": rows}
    if len(rows) == 2:
        out["step_time_ratio"] = rows[1]["step_s"] / rows[0]["step_s"]
        out["state_ratio"] = rows[1]["state_MiB"] / rows[0]["state_MiB"]
        print(json.dumps({k: out[k] for k in ("step_time_ratio", "state_ratio")}))
    if args.out:
        write_json_atomic(f"{args.out}/summary.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
