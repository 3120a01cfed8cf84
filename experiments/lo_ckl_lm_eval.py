"""Held-out evaluation on the `lm` optimizee family: which optimizer best learns new facts and keeps old ones?

Why a separate script: `metacl meta-train optimizer` evaluates against one fixed Adam (lr 3e-3),
which is a poor step size for these pretrained LMs (it overwrites the old world). Here every
optimizer runs the *same* held-out episodes: facts of the world's `meta_val` people (never used in
meta-training, pool "val") and old-world probes from `nf`, and we report the episode meta-loss
and its parts (mean over tasks of [new-fact object NLL + old-world object NLL] after each task,
and the same for earlier tasks after the last one).

    OMP_NUM_THREADS=1 python experiments/lo_ckl_lm_eval.py --run runs/lo_lm --episodes 8 \
        --out docs/results/lo_ckl_lm_meta/heldout.json
    OMP_NUM_THREADS=1 python experiments/lo_ckl_lm_eval.py --run runs/lo_lm --episodes 8 --also runs/lo_lm_mix \
        --only-also --out docs/results/lo_ckl_lm_meta/heldout_mix.json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from metacl.engine import adamw
from metacl.optim import network as nw
from metacl.optim.functional import LearnedFunctional
from metacl.optim.learned import WEIGHTS_DIR, load_meta
from metacl.optim.meta_train import FAMILIES, MetaTrainConfig, episode_loss
from metacl.utils import write_json_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="meta-training run folder (optimizer.safetensors + summary.json)")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--adam-lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3])
    ap.add_argument("--also", nargs="*", default=[], help="further learned-optimizer folders to evaluate")
    ap.add_argument("--only-also", action="store_true", help="evaluate only the --also optimizers")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    run_cfg = json.load(open(f"{a.run}/summary.json"))["config"]
    cfg = MetaTrainConfig(**{k: v for k, v in run_cfg.items() if k in MetaTrainConfig.__dataclass_fields__})
    steps = cfg.inner_steps

    def learned(path, stem=None):
        meta, net, _ = load_meta(path, stem=stem)
        return lambda: LearnedFunctional(meta, net, total_steps=steps)

    init_net = nw.NetConfig(init_lr=cfg.init_lr)
    init_meta = nw.init_meta(init_net, cfg.seed)
    optimizers = {
        "learned (lm-trained)": learned(a.run),
        "learned (shipped digits weights)": learned(WEIGHTS_DIR, "digits"),
        f"untrained network (init lr {cfg.init_lr:g})": lambda: LearnedFunctional(init_meta, init_net, total_steps=steps),
        **{f"Adam lr {lr:g}": (lambda lr=lr: adamw(lr=lr)) for lr in a.adam_lrs},
    }
    also = {f"learned ({p})": learned(p) for p in a.also}
    optimizers = also if a.only_also else optimizers | also
    out = {"run": a.run, "episodes": a.episodes, "seed": a.seed, "pool": "val (meta_val facts, nf old-world probes)",
           "config": run_cfg, "results": {}}
    for name, make in optimizers.items():
        rng = random.Random(a.seed)
        t0, tot, learn, retain = time.time(), [], [], []
        for _ in range(a.episodes):
            ep = FAMILIES["lm"](rng, cfg, "val")  # always the lm family, whatever the run trained on
            L, parts = episode_loss(ep, make(), cfg, differentiable=False)
            tot.append(float(L)); learn.append(parts["learn"]); retain.append(parts["retain"])
        n = a.episodes
        out["results"][name] = {"meta_loss": sum(tot) / n, "learn": sum(learn) / n, "retain": sum(retain) / n,
                                "per_episode_meta_loss": tot, "seconds": round(time.time() - t0, 1)}
        print(f"{name:40s} meta-loss {sum(tot) / n:7.3f}  learn {sum(learn) / n:6.3f}  retain {sum(retain) / n:6.3f}",
              flush=True)
    write_json_atomic(a.out, out)


if __name__ == "__main__":
    main()
