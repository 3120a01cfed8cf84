"""Scale check behind the EWC / NCL defaults (issue 7): how big are the Fisher and the gradient?

Why: a quadratic penalty's lambda and NCL's prior precision only mean something relative to the
size of the diagonal Fisher and of the task gradient of the model at hand. This prints both for
a base LM and a generated world, plus the length s = sqrt(g . Lambda^-1 g) of NCL's
preconditioned step for a few (lambda, eta0).

    OMP_NUM_THREADS=1 python experiments/baselines1_calibrate.py runs/baselines1/base_lm runs/baselines1/world
    OMP_NUM_THREADS=1 python experiments/baselines1_calibrate.py runs/w2/lm_small_s0 runs/w2/world_e200_s0 \
        --json docs/results/baselines1_calibrate_v2/calibrate.json

`--json` also writes the printed figures to a file, so a doc can cite them.
"""

from __future__ import annotations

import argparse
import json

import torch

from metacl.models.loading import load_model_and_tokenizer
from metacl.core.batching import tokenize_docs
from metacl.strategies.importance import fisher_on_docs, mean_nll
from metacl.strategies.base import TrainContext


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("world")
    ap.add_argument("--fisher-docs", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    m, tok = load_model_and_tokenizer(a.model, device="cpu")
    old = [json.loads(l)["text"] for l in open(f"{a.world}/pretrain_corpus.jsonl")]
    tl = [json.loads(l)["evidence"] for l in open(f"{a.world}/tl.jsonl")]
    ctx = TrainContext(model=m, tokenizer=tok, device=torch.device("cpu"), train_docs=tl, old_corpus=old,
                       batch_size=8, max_length=128, generator=torch.Generator().manual_seed(a.seed))
    F = fisher_on_docs(ctx, old, a.fisher_docs)
    f = torch.cat([x.flatten() for x in F.values()])
    print(f"Fisher on {a.fisher_docs} pre-training docs: mean {f.mean():.3e} median {f.median():.3e} "
          f"max {f.max():.3e} sum {f.sum():.3e} over {f.numel()} weights")
    b = tokenize_docs(tok, tl[:8], 128)
    g = torch.autograd.grad(mean_nll(m, b), [p for _, p in ctx.trainable()])
    g = torch.cat([x.flatten() for x in g])
    print(f"gradient on 8 TL documents: norm {g.norm():.3e}, mean |g| {g.abs().mean():.3e}")
    out = {"model": a.model, "world": a.world, "fisher_docs": a.fisher_docs, "seed": a.seed, "weights": f.numel(),
           "fisher": {"mean": float(f.mean()), "median": float(f.median()), "max": float(f.max()), "sum": float(f.sum())},
           "grad_8_tl_docs": {"norm": float(g.norm()), "mean_abs": float(g.abs().mean())}, "ncl_step": []}
    for lam in (1e2, 1e3, 1e4):
        for eta in (1e-2, 1e-1, 1.0):
            P = lam * f + eta
            s, r = float((g * g / P).sum().sqrt()), float((g / P).abs().mean())
            out["ncl_step"].append({"lambda": lam, "eta0": eta, "s": s, "mean_abs_g_over_Lambda": r})
            print(f"lambda {lam:g} eta0 {eta:g}: s = {s:.3e}, mean |g / Lambda| = {r:.3e}")
    if a.json:
        from pathlib import Path

        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
