"""Short meta-trainings on the toy family against a tuned AdamW (the setting of the tuned-AdamW test).

    OMP_NUM_THREADS=1 python experiments/lo_toy_tuned.py --out docs/results/lo_toy_tuned/summary.json

AdamW's lr is tuned over 0.03, 0.1, 0.3, 1.0 on validation episodes (seed stream 101); each
optimizer network then starts Adam-like at that lr, is meta-trained for 40 steps (2 episodes each,
meta-lr 0.01) and is scored on the test episodes of `evaluate` (seed 0). Rows: the MLP head, the
linear head, and the linear head with its context path undamped (`network.CTX_COEF_SCALE` = 1,
same initial coef.w), to show why the damping is there.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from metacl.optim import network as nw
from metacl.optim.baselines import tune_adamw
from metacl.optim.meta_train import MetaTrainConfig, evaluate, meta_train
from metacl.utils import write_json_atomic


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = MetaTrainConfig(family="toy", steps=args.steps, inner_steps=8, meta_lr=0.01, meta_batch=2,
                          eval_episodes=8, ckpt_every=10_000)
    best, table = tune_adamw(cfg, (0.03, 0.1, 0.3, 1.0), episodes=8, seed=101)
    cfg.init_lr = cfg.baseline_lr = best
    res = {"command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv), "adamw_validation": table,
           "adamw_best_lr": best, "rows": {}}
    for name, head, scale in (("mlp", "mlp", None), ("linear", "linear", None), ("linear_undamped", "linear", 1.0)):
        saved = nw.CTX_COEF_SCALE
        if scale is not None:
            nw.CTX_COEF_SCALE = scale
        try:
            cfg.head = head
            net = nw.NetConfig(init_lr=best, head=head)
            t0 = time.time()
            untrained = evaluate(nw.init_meta(net, cfg.seed), net, cfg, cfg.eval_episodes, cfg.seed)
            summary = meta_train(cfg, tempfile.mkdtemp() + "/run", net=net, progress=False)
            res["rows"][name] = {"untrained": untrained["learned"], "trained": summary["eval_heldout"]["learned"],
                                 "adamw_test": summary["eval_heldout"]["adam"], "seconds": round(time.time() - t0, 1)}
            print(name, res["rows"][name], flush=True)
        finally:
            nw.CTX_COEF_SCALE = saved
    write_json_atomic(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
