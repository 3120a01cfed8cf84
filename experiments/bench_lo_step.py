"""`optimizer.step()` cost of LearnedOptimizer vs torch AdamW (foreach), interleaved in one process.

    OMP_NUM_THREADS=1 python experiments/bench_lo_step.py --out docs/results/lo_step_cost/summary.json

Why this design: the machine is shared, so the optimizers are timed round-robin in one process
(each round runs every optimizer once, the order rotating), and both the calling thread's CPU
time (`time.thread_time`, insensitive to being descheduled) and wall time are recorded; with
`torch.set_num_threads(1)` the thread's CPU time is all the step's work (with `--threads 2` read the wall-time ratios). Every optimizer has its
own copy of the model and all share one set of gradients (none of them writes to a gradient),
rescaled between rounds so the statistics keep moving. Rows: AdamW (foreach), the learned
optimizer with the shipped weights (MLP head), the same with `compile=True` (its warm-up steps
compile and are not timed), and with the linear head (`NetConfig(head="linear")`, untrained
weights: the cost does not depend on their values; also with `anchor_start`, and that compiled). Ratios use the per-round medians.
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

MODELS = {"8.4M": (1024, 8), "100M": (4096, 6), "llama100M": None}  # Linear(width, width) x layers; None: an LM


def _build(model_name: str) -> nn.Module:
    """The Linear stacks isolate the per-parameter cost (few, large tensors); `llama100M` is an HF Llama
    built from a config (no download; 12 layers, d 768, vocab 16000, untied head: 110M parameters in
    111 tensors), so per-tensor overhead and many small (norm) tensors are counted too."""
    if MODELS[model_name] is None:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=16000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                          num_attention_heads=12, num_key_value_heads=12, tie_word_embeddings=False)
        return LlamaForCausalLM(cfg)
    width, layers = MODELS[model_name]
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])


def _optimizers(params_of, which):
    out = {}
    for name in which:
        ps = params_of(name)
        if name == "adamw":
            out[name] = torch.optim.AdamW(ps, lr=1e-4, foreach=True)
        elif name == "learned_mlp":  # the MLP head: the shipped digits weights
            out[name] = LearnedOptimizer.pretrained(ps, name="digits", total_steps=100)
        elif name == "learned_mlp_compiled":  # the warm-up step compiles (not timed)
            out[name] = LearnedOptimizer.pretrained(ps, name="digits", total_steps=100, compile=True)
        elif name == "learned_linear":
            out[name] = LearnedOptimizer(ps, config=NetConfig(head="linear"), total_steps=100)
        elif name == "learned_linear_anchor":  # + anchor_start: the consolidated state (anchor, old importance)
            out[name] = LearnedOptimizer(ps, config=NetConfig(head="linear", anchor_start=True), total_steps=100)
        elif name == "learned_linear_anchor_compiled":  # the same, compile=True (its warm-up steps compile)
            out[name] = LearnedOptimizer(ps, config=NetConfig(head="linear", anchor_start=True), total_steps=100,
                                         compile=True)
        elif name == "learned_default":  # whatever `LearnedOptimizer.pretrained()` ships
            out[name] = LearnedOptimizer.pretrained(ps, total_steps=100)
    return out


def bench(model_name: str, rounds: int, which: list[str]) -> dict:
    torch.manual_seed(0)
    base = _build(model_name)
    grads = [torch.randn_like(p) * 1e-3 for p in base.parameters()]
    models = {}

    def params_of(name):
        m = _build(model_name)
        m.load_state_dict(base.state_dict())
        for p, g in zip(m.parameters(), grads):
            p.grad = g
        models[name] = m
        return list(m.parameters())

    opts = _optimizers(params_of, which)
    for o in opts.values():  # warm-up: allocates state (and compiles, for the compiled rows)
        o.step()
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
    desc = "HF Llama (config only)" if MODELS[model_name] is None else "{1} x Linear({0}, {0})".format(*MODELS[model_name])
    return {"model": desc, "params": n_params, "tensors": len(grads),
            "rows": rows, "ratio_to_adamw": ratios}


def breakdown(model_name: str, rounds: int) -> dict:
    """Where the MLP head's step goes: its parts timed one by one (thread CPU time, medians), next to
    AdamW's whole step, interleaved. `mlp` is the per-parameter network alone (two addmm + GELU on
    precomputed features): the floor for any implementation that keeps these numbers in eager mode."""
    from metacl.optim import features as fe
    from metacl.optim import network as nw

    width, layers = MODELS[model_name]
    torch.manual_seed(0)
    m = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    a = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    for p, q in zip(m.parameters(), a.parameters()):
        p.grad = q.grad = torch.randn_like(p) * 1e-3
    opt = LearnedOptimizer.pretrained(m.parameters(), name="digits", total_steps=100)
    adam = torch.optim.AdamW(a.parameters(), lr=1e-4, foreach=True)
    opt.step()
    adam.step()
    cfg, meta, chunk = opt.cfg, opt.meta, opt.chunk_size
    Fp, H = cfg.n_param_features, cfg.hidden
    buf = torch.empty((Fp + H) * chunk)
    out = torch.empty(2 * chunk)
    fw = nw.fast_weights(meta)
    b1 = meta["mlp1.b"].reshape(H, 1)
    ps = list(m.parameters())
    sts = [opt.state[p] for p in ps]

    def advance():
        for p, st in zip(ps, sts):
            opt._advance_inplace(p.detach(), p.grad, st, chunk)

    def reduce():
        for p, st in zip(ps, sts):
            fe.scalars_and_token(p.detach(), p.grad, st, 5.0, 0.1)

    scal = [fe.scalars_and_token(p.detach(), p.grad, st, 5.0, 0.1)[0] for p, st in zip(ps, sts)]

    def chunks(fn):
        def run():
            for p, st, sc in zip(ps, sts, scal):
                n, flat = p.numel(), {k: v.reshape(-1) for k, v in st.items() if k not in ("step", "task_step")}
                for s0 in range(0, n, chunk):
                    e = min(n, s0 + chunk)
                    fn(p.detach().reshape(-1)[s0:e], p.grad.reshape(-1)[s0:e], {k: v[s0:e] for k, v in flat.items()}, sc, e - s0)
        return run

    def feats(p, g, st, sc, k):
        bb = buf[: (Fp + H) * k].view(Fp + H, k)
        fe.param_features_into(bb[:Fp], bb[Fp], p, g, st, sc)

    def mlp(p, g, st, sc, k):
        bb = buf[: (Fp + H) * k].view(Fp + H, k)
        nw.param_update_into(fw, cfg, bb, out[: 2 * k].view(2, k), b1, torch.tensor(1e-3))

    parts = {"adamw_step": adam.step, "advance": advance, "reductions": reduce, "features": chunks(feats),
             "mlp": chunks(mlp)}
    t = {k: [] for k in parts}
    for _ in range(rounds):
        for k, fn in parts.items():
            t0 = time.thread_time()
            fn()
            t[k].append(time.thread_time() - t0)
    med = {k: statistics.median(v) for k, v in t.items()}
    return {"model": model_name, "cpu_s_median": med,
            "ratio_to_adamw": {k: v / med["adamw_step"] for k, v in med.items() if k != "adamw_step"}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="8.4M,100M,llama100M", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per model (after one warm-up step)")
    ap.add_argument("--rows", default="adamw,learned_mlp,learned_mlp_compiled,learned_linear")
    ap.add_argument("--breakdown", default="8.4M", help="model whose MLP-head step is timed part by part ('' = none)")
    ap.add_argument("--label", default="preliminary (shared machine)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the issue's first figures used 2)")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    which = [r.strip() for r in args.rows.split(",") if r.strip()]
    res = {"command": f"OMP_NUM_THREADS={args.threads} python " + " ".join(sys.argv), "label": args.label,
           "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "loadavg_before": os.getloadavg(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "models": {}}
    for m in args.models.split(","):
        res["models"][m] = bench(m.strip(), args.rounds, which)
        print(json.dumps({m: res["models"][m]["ratio_to_adamw"]}), flush=True)
    if args.breakdown:
        res["breakdown"] = breakdown(args.breakdown, args.rounds)
        print(json.dumps({"breakdown": res["breakdown"]["ratio_to_adamw"]}), flush=True)
    res["loadavg_after"] = os.getloadavg()
    if args.out:
        write_json_atomic(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
