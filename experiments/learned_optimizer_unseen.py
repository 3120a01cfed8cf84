"""Does the learned optimizer train an optimizee it never saw? A CNN (meta-training used MLPs only)
on all 10 digit classes of the benchmark pool, against Adam, 3 seeds; loss curves as a PNG.

    OMP_NUM_THREADS=1 python experiments/learned_optimizer_unseen.py --out docs/results/lo_unseen_cnn \
        [--optimizer-path DIR] [--steps 150] [--total-steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

from metacl.benchmarks.split_digits import accuracy, batches, load_pool, make_model, make_task
from metacl.utils import write_json_atomic


def train(opt_name: str, seed: int, steps: int, path: str | None, adam_lr: float,
          total_steps: int | None = None) -> tuple[list[float], float]:
    from metacl.optim import LearnedOptimizer

    x, y = load_pool("bench")
    task = make_task(x, y, None, None, torch.Generator().manual_seed(seed))
    model = make_model("cnn", seed)
    if opt_name == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=adam_lr)
    elif path:
        opt = LearnedOptimizer.from_pretrained(path, model.parameters(), total_steps=total_steps or steps)
    else:
        opt = LearnedOptimizer.pretrained(model.parameters(), total_steps=total_steps or steps)
    losses = []
    for xb, yb in batches(task, steps, 32, torch.Generator().manual_seed(seed + 1)):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(float(loss.detach()))
    return losses, accuracy(model, task)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--optimizer-path", default=None)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--adam-lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--total-steps", type=int, default=None,
                    help="the learned optimizer's horizon for its 'fraction done' feature (default: --steps); "
                    "meta-training used 40 steps per task, so 40 asks for the regime it was trained in")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = {"command": "python " + " ".join(sys.argv), "hardware": "CPU, 1 thread", "runs": {}}
    for name in ("learned", "adam"):
        runs = [train(name, s, args.steps, args.optimizer_path, args.adam_lr, args.total_steps) for s in args.seeds]
        curve = [statistics.mean(r[0][i] for r in runs) for i in range(args.steps)]
        res["runs"][name] = {"test_acc": [r[1] for r in runs], "test_acc_mean": statistics.mean(r[1] for r in runs),
                             "final_train_loss_mean": statistics.mean(statistics.mean(r[0][-10:]) for r in runs),
                             "mean_curve": curve}
        print(name, res["runs"][name]["test_acc_mean"], res["runs"][name]["final_train_loss_mean"], flush=True)
    write_json_atomic(f"{args.out}/summary.json", res)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name in ("learned", "adam"):
        c = res["runs"][name]["mean_curve"]
        sm = [statistics.mean(c[max(0, i - 4): i + 1]) for i in range(len(c))]
        ax.plot(sm, label=f"{name} (test acc {res['runs'][name]['test_acc_mean']:.3f})")
    ax.set_xlabel("step"); ax.set_ylabel("train loss (mean of 3 seeds, 5-step avg)")
    ax.set_title("Unseen optimizee: CNN on 10-class digits"); ax.legend(); fig.tight_layout()
    fig.savefig(f"{args.out}/loss_curves.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
