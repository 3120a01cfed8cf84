"""Where does one token-weighting meta-step spend its time? torch.profiler over one step of a bench row.

Why: issue 18 asks to profile before optimising. This builds exactly the step that
`experiments/bench_meta_throughput.py` times (same model, data and closure, via its
`make_step`), runs `--warmup` steps, then one step under `torch.profiler` and prints the top
ops by self CPU time plus the wall time of the profiled and of an unprofiled step. The
profiler's own overhead inflates small ops; read the table for proportions, not totals.

    python experiments/profile_meta_step.py --size small --row meta2_k2 --threads 2 --top 30
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import torch

    import bench_meta_throughput as bench

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(bench.SIZES), default="small")
    ap.add_argument("--row", default="meta2_k2", help="plain | meta2_kK | meta2_kK_t1 | meta1_kK (K must match --K)")
    ap.add_argument("--K", type=int, default=2)
    ap.add_argument("--M", type=int, default=4)
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--TQ", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--sort", default="self_cpu_time_total")
    ap.add_argument("--by-shape", default="", help="also list these ops (comma-separated, e.g. aten::mm) by input shapes")
    args = ap.parse_args()
    args.precision, args.device = "fp32", "cpu"
    torch.set_num_threads(args.threads)
    step = bench.make_step(args.row, args, torch.device("cpu"))
    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    step()
    plain_s = time.perf_counter() - t0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=bool(args.by_shape)) as prof:
        t0 = time.perf_counter()
        step()
        prof_s = time.perf_counter() - t0
    print(f"# {args.row} size={args.size} K={args.K} M={args.M} T={args.T} threads={args.threads}: "
          f"unprofiled step {plain_s:.3f} s, profiled step {prof_s:.3f} s")
    print(prof.key_averages().table(sort_by=args.sort, row_limit=args.top, max_name_column_width=48))
    if args.by_shape:
        ops = set(args.by_shape.split(","))
        rows = sorted((e for e in prof.key_averages(group_by_input_shape=True) if e.key in ops),
                      key=lambda e: -e.self_cpu_time_total)[:args.top]
        print(f"# by input shapes: {args.by_shape}")
        for e in rows:
            print(f"{e.key:<22}{e.self_cpu_time_total / 1e3:>10.1f} ms {e.count:>6} calls  {e.input_shapes}")


if __name__ == "__main__":
    main()
