"""`metacl meta-train optimizer`: meta-train the learned optimizer (see metacl.optim.meta_train)."""

from __future__ import annotations

import argparse

from metacl.precision import PRECISIONS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "optimizer",
        help="meta-train the transformer-based learned optimizer (Split-Digits optimizees, retention meta-loss)",
        description="Meta-train LearnedOptimizer through metacl.engine.unroll. Writes optimizer.safetensors/.json "
        "(load with LearnedOptimizer.from_pretrained(OUT, params)), metrics.jsonl, summary.json and a checkpoint/.",
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--family", default="digits", help="optimizee family: digits (MLPs on Split/Permuted digits), toy, lm (tiny pretrained Llamas learning new facts of a generated world; see metacl/optim/lm_family.py), lm2 (the same on a world v2 of its own seed) or digits+lm (half and half)")
    p.add_argument("--steps", type=int, default=200, help="meta-steps (one episode each)")
    p.add_argument("--inner-steps", type=int, default=40, help="optimizee updates per task")
    p.add_argument("--tasks-per-episode", type=int, default=2, help="tasks per episode (the maximum if --min-tasks is set)")
    p.add_argument("--min-tasks", type=int, default=None, help="draw each episode's length uniformly in [MIN, --tasks-per-episode]")
    p.add_argument("--kinds", default="split,permuted",
                   help="digits episode kinds, comma list of split (task-IL), class (class-IL, shared head), permuted")
    p.add_argument("--normalize", choices=["none", "log_classes"], default="none",
                   help="log_classes: divide each task's loss by ln(#classes) so 10-class tasks do not dominate")
    p.add_argument("--learn-reduce", choices=["sum", "mean"], default="sum",
                   help="combine the per-task 'loss after learning it' terms by sum (original) or mean")
    p.add_argument("--retention", type=float, default=1.0, help="weight of earlier tasks' held-out loss after the last task")
    p.add_argument("--estimator", choices=["backprop", "es"], default="backprop")
    p.add_argument("--second-order", action="store_true", help="differentiate through inner gradients (slower)")
    p.add_argument("--truncate", type=int, default=None, help="differentiate only the last k inner steps of each task")
    p.add_argument("--es-pairs", type=int, default=4)
    p.add_argument("--es-sigma", type=float, default=0.01)
    p.add_argument("--meta-lr", type=float, default=5e-3)
    p.add_argument("--init-lr", type=float, default=3e-3, help="step size of the untrained, Adam-like optimizer")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=25)
    p.add_argument("--eval-episodes", type=int, default=8)
    p.add_argument("--val-every", type=int, default=0,
                   help="meta-validate every N steps (and at step 0) on --val-episodes episodes of stream --val-seed "
                        "and ship the best weights instead of the last (0: off, ship the last)")
    p.add_argument("--val-episodes", type=int, default=8)
    p.add_argument("--val-seed", type=int, default=101,
                   help="validation episode stream (101: the one a tuned AdamW's lr is chosen on); not --seed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these tiny models)")
    p.add_argument("--meta-batch", type=int, default=1,
                   help="episodes per meta-step (their meta-gradients averaged); under torchrun split over the "
                   "processes, so it must be a multiple of --nproc_per_node")
    p.add_argument("--max-bad-steps", type=int, default=10,
                   help="stop after this many meta-steps skipped for a non-finite loss or gradient")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: autocast the episodes' forward passes (fp32 master weights)")
    p.add_argument("--head", choices=["mlp", "linear"], default="mlp",
                   help="per-parameter head: mlp (as the shipped weights) or linear (per-tensor coefficients, ~3x cheaper step)")
    p.add_argument("--anchor-start", action="store_true",
                   help="treat the starting weights as a finished task (anchor + drift features from step 1); "
                        "saved in the weights' config, so deployment does the same")
    p.add_argument("--coef-scale", type=float, nargs=8, default=None, metavar="S",
                   help="linear head: scale of each feature's coefficient (g, m0.5, m0.9, m0.99, value, importance, "
                        "old importance, drift; default 1 1 1 1 0.01 0.01 0.01 0.01)")
    p.add_argument("--imp-pull", action="store_true",
                   help="linear head: learn an importance-weighted pull back to the anchor, applied beside the step "
                        "(not scaled by lr); saved in the weights' config")
    p.add_argument("--prime-batches", type=int, default=0, metavar="N",
                   help="lm families: measure the old-task importance on N pre-training batches of each base LM "
                        "before every episode (deploy with ckl run --learned-prime-docs)")
    p.add_argument("--plasticity", type=float, default=0.0,
                   help="weight of the plasticity term: each task's held-out new-task loss above AdamW's on the same episode")
    p.add_argument("--plasticity-form", choices=["hinge", "ratio"], default="hinge")
    p.add_argument("--baseline-lr", type=float, default=3e-3, help="lr of the fixed AdamW the held-out evaluation compares with")
    p.add_argument("--plasticity-lr", type=float, default=None, help="lr of the reference AdamW (default: a tuned one is best)")
    p.add_argument("--init-from", default=None, metavar="WEIGHTS",
                   help="start from these weights (a directory written by meta-training, or a shipped name such as "
                        "default) instead of a fresh init, e.g. to continue short-horizon weights on longer tasks")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    import torch

    from metacl.optim.meta_train import MetaTrainConfig, meta_train

    from metacl.errors import MetaclError
    from metacl.utils import check_out_kind

    for name in ("meta_lr", "init_lr"):  # bad input is refused before --out is touched (H6)
        if not getattr(args, name) > 0:
            raise MetaclError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.batch_size < 1:
        raise MetaclError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_out_kind(args.out, "meta-train optimizer")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = MetaTrainConfig(
        family=args.family, steps=args.steps, inner_steps=args.inner_steps, tasks_per_episode=args.tasks_per_episode,
        retention=args.retention, estimator=args.estimator, first_order=not args.second_order, truncate=args.truncate,
        es_pairs=args.es_pairs, es_sigma=args.es_sigma, meta_lr=args.meta_lr, batch_size=args.batch_size,
        init_lr=args.init_lr, seed=args.seed, ckpt_every=args.ckpt_every, eval_episodes=args.eval_episodes,
        min_tasks=args.min_tasks, kinds=args.kinds, normalize=args.normalize, learn_reduce=args.learn_reduce,
        meta_batch=args.meta_batch, max_bad_steps=args.max_bad_steps, precision=args.precision,
        head=args.head, anchor_start=args.anchor_start,
        coef_scale=tuple(args.coef_scale) if args.coef_scale else None,
        imp_pull=args.imp_pull, prime_batches=args.prime_batches,
        plasticity=args.plasticity, plasticity_form=args.plasticity_form,
        plasticity_lr=args.plasticity_lr, baseline_lr=args.baseline_lr, init_from=args.init_from,
        val_every=args.val_every, val_episodes=args.val_episodes, val_seed=args.val_seed,
    )
    summary = meta_train(cfg, args.out, resume=args.resume, progress=not args.no_progress,
                         command="metacl " + " ".join(sys.argv[1:]))
    if "eval_heldout" in summary:  # rank 0 (or the only process) reports
        print(json.dumps({"out": args.out, "eval_heldout": summary["eval_heldout"]}, indent=1))
        print(heldout_verdict(summary["eval_heldout"], args.eval_episodes, summary["config"].get("baseline_lr")))
    return 0


def heldout_verdict(ev: dict, episodes: int, baseline_lr: float | None = None) -> str:
    """One sentence reading the held-out numbers: which optimizer did better, and by how much.

    Why: the JSON above lists meta-loss, learn and retain losses for both optimizers, but not that
    all three are losses (lower is better) nor which side won; a reader had to know the code.
    """
    if not ev or "learned" not in ev or "adam" not in ev:
        return "no held-out evaluation (--eval-episodes 0)"
    lo, ad = ev["learned"]["meta_loss"], ev["adam"]["meta_loss"]
    adam = f"AdamW (lr {baseline_lr:g})" if baseline_lr else "AdamW"
    rel = f" by {100 * abs(ad - lo) / abs(ad):.1f}%" if ad else ""
    who = ("the learned optimizer is better" + rel if lo < ad else
           f"{adam} is better" + rel if lo > ad else "a tie")
    return (f"held-out episodes ({episodes}): meta-loss {lo:.4f} for the learned optimizer vs {ad:.4f} for {adam}; "
            f"all three numbers are losses, lower is better: {who} (held-out loss of each task just after learning it {ev['learned']['learn']:.4f} "
            f"vs {ev['adam']['learn']:.4f}; of the earlier tasks after the last one {ev['learned']['retain']:.4f} vs "
            f"{ev['adam']['retain']:.4f})")
