"""Chunk size of the linear head's step: 2^16 (the old default) vs 2^18 (the new one), against AdamW.

    OMP_NUM_THREADS=1 python experiments/bench_lo_chunk.py --threads 1 --out docs/results/lo_step_cost/chunk_1thread.json
    OMP_NUM_THREADS=2 python experiments/bench_lo_chunk.py --threads 2 --out docs/results/lo_step_cost/chunk_2threads.json

8 x Linear(1024, 1024) (8.4M parameters), the linear head with `anchor_start` (the default's
configuration), one shared set of gradients, the optimizers stepped round-robin in one process (the
order rotating), wall time per step, medians over rounds. The two chunk sizes give the same numbers
to the bit (tests/test_learned_optimizer_speed.py); only the time differs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from metacl.optim import LearnedOptimizer, NetConfig
from metacl.utils import write_json_atomic


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    def build():
        return nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(8)])

    base = build()
    grads = [torch.randn_like(p) * 1e-3 for p in base.parameters()]
    cfg = NetConfig(head="linear", anchor_start=True)
    opts = {}

    def make(name, fn):
        m = build()
        m.load_state_dict(base.state_dict())
        for p, g in zip(m.parameters(), grads):
            p.grad = g
        opts[name] = fn(list(m.parameters()))

    make("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-4, foreach=True))
    make("chunk_2^16", lambda ps: LearnedOptimizer(ps, config=cfg, total_steps=100, chunk_size=1 << 16))
    make("chunk_2^18", lambda ps: LearnedOptimizer(ps, config=cfg, total_steps=100, chunk_size=1 << 18))
    for o in opts.values():
        o.step()
    t = {n: [] for n in opts}
    names = list(opts)
    for r in range(a.rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            w = time.perf_counter()
            opts[n].step()
            t[n].append(time.perf_counter() - w)
    med = {n: statistics.median(v) for n, v in t.items()}
    res = {"command": f"OMP_NUM_THREADS={a.threads} python " + " ".join(sys.argv), "threads": a.threads,
           "rounds": a.rounds, "wall_s_median": med, "ratio_to_adamw": {n: med[n] / med["adamw"] for n in names},
           "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    for n in names:
        print(f"{n}: {med[n]:.4f} s, {med[n] / med['adamw']:.2f}x AdamW")
    if a.out:
        write_json_atomic(a.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
