"""Smoke run of the plasticity-priced meta-objective on the `lm` family: does it run, what does it log?

    OMP_NUM_THREADS=1 python experiments/lo_plasticity_smoke.py --out docs/results/lo_plasticity_smoke

Two short meta-trainings from the same seed, the same episodes and the same start, one with the
plain meta-loss (`plasticity=0`) and one with `+ plasticity * sum_i relu(TL_i - TL_i^AdamW)`
(`metacl.optim.plasticity`), on a shrunk `lm` family (`--small`, as the tests shrink it) so it ends
in minutes on a CPU. It checks that the term is computed, logged and differentiated; a few
meta-steps say nothing about what it buys (that needs the full meta-training of issue 15).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from metacl.optim import lm_family as lf
from metacl.optim.meta_train import MetaTrainConfig, meta_train
from metacl.utils import write_json_atomic


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--inner-steps", type=int, default=4)
    ap.add_argument("--plasticity", type=float, default=1.0)
    ap.add_argument("--plasticity-lr", type=float, default=1e-3)
    ap.add_argument("--head", choices=("mlp", "linear"), default="mlp")
    ap.add_argument("--meta-lr", type=float, default=5e-3)
    ap.add_argument("--small", action="store_true", help="the tests' shrunk lm family (40 entities, d=32)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.small:
        lf.LM = replace(lf.LM, entities=40, vocab_size=320, hidden_sizes=(32,), pretrain_steps=30, block_size=64,
                        docs_per_task=4, batch_docs=2, old_probes=4)
    from metacl.optim import network as nw

    out = Path(args.out)
    res = {"command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv), "lm_family": lf.settings_dict(), "runs": {}}
    for weight in (0.0, args.plasticity):
        cfg = MetaTrainConfig(family="lm", steps=args.steps, inner_steps=args.inner_steps, tasks_per_episode=2,
                              init_lr=1e-3, baseline_lr=args.plasticity_lr, meta_lr=args.meta_lr, eval_episodes=2,
                              ckpt_every=1000, plasticity=weight, plasticity_lr=args.plasticity_lr, head=args.head)
        net = nw.NetConfig(init_lr=cfg.init_lr, head=args.head)
        t0 = time.time()
        run_dir = out / f"plasticity_{weight:g}"
        summary = meta_train(cfg, run_dir, net=net, progress=False, command=res["command"])
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        res["runs"][f"plasticity={weight:g}"] = {
            "config": asdict(cfg), "net": net.to_dict(), "seconds": round(time.time() - t0, 1),
            "metrics": rows, "eval_heldout": summary["eval_heldout"]}
        for f in run_dir.iterdir():  # keep only the summary JSON in the results folder
            if f.is_file():
                f.unlink()
        for d in sorted(run_dir.rglob("*"), reverse=True):
            (d.unlink() if d.is_file() else d.rmdir())
        run_dir.rmdir()
        print(json.dumps({"plasticity": weight, "seconds": res["runs"][f"plasticity={weight:g}"]["seconds"],
                          "gap": [r.get("plasticity_gap") for r in rows], "eval": summary["eval_heldout"]}), flush=True)
    write_json_atomic(out / "summary.json", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
