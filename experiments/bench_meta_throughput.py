"""Throughput and peak memory of a token-weighting meta-step vs plain fine-tuning, same base LM.

Why: a meta-step differentiates through K inner updates of the whole base LM, so it costs
several fine-tuning steps. Users sizing a GPU job need that factor: this script reports
document tokens per second for

- `plain`:       one AdamW fine-tuning step on M documents of T tokens (the CKL inner loop);
- `meta2_kK`:    one token-weighting meta-step, second order: weighter forward, K weighted
                 inner AdamW steps on the M documents (per example, batched), query NLL,
                 backward into the weighter through all K steps, outer AdamW step. This is the
                 computation of `metacl.meta.train_token_weighting.meta_objective`, on random
                 token ids so any size can be built without a tokenizer, called the same way
                 (embedding rows no document reads left out of the inner loop, `active_rows`;
                 per-example param dicts, `stack=False`; an older metacl without them is run
                 the way its meta_objective did, so the script also measures `before` trees);
- `meta2c_kK`:   the same second-order meta-step through `engine.compiled_unroll_loss`, as
                 `meta-train token-weighting --compile` runs it: inner loop and query NLL as one
                 torch.compile'd function per example (same meta-gradient, tests/test_compiled_unroll.py),
                 the read embedding rows padded to M * T; its first step compiles (`first_step_s`);
- `meta2_kK_t1`: the same with `truncate=1` (only the last inner step differentiated);
- `meta1_kK`:    the same unroll with first-order inner gradients. For a token weighter this
                 carries no meta-gradient at all (the weights only enter through the detached
                 inner gradient), so it is a cost floor, not a usable training mode;

and the fraction `tokens/s(row) / tokens/s(plain)`. Tokens = M * T document tokens per step.

Time: all rows are built in ONE process and stepped round-robin for `--repeats` rounds after
`--warmup` rounds, so background load hits every row alike; tokens/s uses the fastest round.
Memory: each row again alone in a fresh process, one step after a warm-up: on CUDA the
allocator's `max_memory_allocated`, on CPU the process's peak RSS (also printed minus the RSS
before the model was built), labelled.

    python experiments/bench_meta_throughput.py --size cpu-small --device cpu --out runs/bench_meta.json
    python experiments/bench_meta_throughput.py --size 134m --device cuda --precision bf16 --M 8 --T 256  # a GPU
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> Llama shape. 134m: GPT-2-small width/depth (768 x 12) with a 32k vocabulary, untied (134M parameters).
SIZES = {
    "cpu-small": dict(vocab=2048, d=128, layers=2, heads=4, ffn=344),
    "small": dict(vocab=8192, d=256, layers=4, heads=4, ffn=688),
    "134m": dict(vocab=32000, d=768, layers=12, heads=12, ffn=2048),
}


def build(size: str, seed: int, device, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SIZES[size]
    cfg = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["d"], num_hidden_layers=s["layers"],
                      num_attention_heads=s["heads"], num_key_value_heads=s["heads"], intermediate_size=s["ffn"],
                      max_position_embeddings=1024, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype)


def batch(M: int, T: int, vocab: int, device, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (M, T), generator=g).to(device)
    am = torch.ones_like(ids)
    return {"input_ids": ids, "attention_mask": am, "labels": ids.clone()}


def make_step(row: str, args, dev):
    """Build the model(s) for `row` and return a closure doing one step (returns the loss)."""
    import torch

    from metacl import engine
    from metacl.meta.token_weighting import TokenWeighter
    from metacl.meta.train_token_weighting import weighted_doc_loss
    from metacl.precision import autocast

    model = build(args.size, 0, dev, torch.float32)
    docs = batch(args.M, args.T, SIZES[args.size]["vocab"], dev, 1)
    query = batch(args.M, args.TQ, SIZES[args.size]["vocab"], dev, 2)
    if row == "plain":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step():
            with autocast(args.precision, dev):
                loss = model(**docs).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss
        return step

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    weighter = TokenWeighter.from_base_lm(model)
    wopt = torch.optim.AdamW(weighter.parameters(), lr=1e-5)
    params = {n: p.detach() for n, p in model.named_parameters()}
    if row.startswith("meta2c"):
        from metacl.engine.active_rows import fixed_size
        from metacl.engine.compiled_unroll import compiled_unroll_loss

        cstep = compiled_unroll_loss(model, weighted_doc_loss, engine.lm_loss, engine.adamw(lr=1e-4), steps=args.K)
        outer = {k: v[:, None] for k, v in query.items()}

        def step():
            with autocast(args.precision, dev):
                w = weighter(docs["input_ids"], docs["attention_mask"])
                inner = {**{k: v[:, None] for k, v in docs.items()}, "token_weights": w[:, None]}
                rows = fixed_size(engine.input_embedding_rows(model, params, [inner]), params, args.M * args.T)
                loss = cstep(params, inner, outer, active_rows=rows)[:, 0].mean()
            wopt.zero_grad(set_to_none=True)
            loss.backward()
            wopt.step()
            return loss
        return step
    first_order = row.startswith("meta1")
    truncate = 1 if row.endswith("_t1") else None
    inner_opt = engine.adamw(lr=1e-4)
    # older metacl (the `before` column of docs/benchmarks.md) has no return_state / active_rows / stack
    sig = inspect.signature(engine.unroll).parameters
    no_state = {"return_state": False} if "return_state" in sig else {}
    fast = "active_rows" in sig  # as meta_objective: embedding rows no document reads left out, per-example list

    def step():
        with autocast(args.precision, dev), engine.second_order_attention(model):
            w = weighter(docs["input_ids"], docs["attention_mask"])
            inner = {k: v[:, None] for k, v in docs.items()}
            inner["token_weights"] = w[:, None]
            extra = dict(active_rows=engine.input_embedding_rows(model, params, [inner]), stack=False) if fast else {}
            pK, _ = engine.unroll(model, params, weighted_doc_loss, [inner] * args.K, optimizer=inner_opt,
                                  first_order=first_order, truncate=truncate, per_example=True, **no_state, **extra)
            if fast:
                per_m = pK
            else:  # as meta_objective then: one unbind, not M selects
                ub = {k: v.unbind(0) for k, v in pK.items()}
                per_m = [{k: v[m] for k, v in ub.items()} for m in range(args.M)]
            losses = [engine.lm_loss(model, per_m[m], {k: v[m:m + 1] for k, v in query.items()}) for m in range(args.M)]
            loss = torch.stack(losses).mean()
        wopt.zero_grad(set_to_none=True)
        if loss.requires_grad:  # first order: no path back to the weighter (see module docstring)
            loss.backward()
            wopt.step()
        return loss
    return step


def torch_device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()})"


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def measure_memory(args) -> dict:
    """Peak memory of one step of `args.row`, alone in this process."""
    import torch

    from metacl.precision import peak_memory

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    before = peak_memory("cpu")["peak_mem_mib"]  # the interpreter + torch + transformers, before any model
    step = make_step(args.row, args, dev)
    step()  # warm-up: lazy allocations, kernel selection
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    loss = step()
    _sync(dev)
    assert torch.isfinite(loss.detach().float()).all(), f"{args.row}: non-finite loss"
    return {"row": args.row, **peak_memory(dev), **({"rss_before_model_mib": before} if dev.type != "cuda" else {})}


def measure_times(args, rows: list[str]) -> dict[str, dict]:
    """Seconds per step of every row, all in this process, interleaved round-robin.

    Interleaving gives every row the same share of whatever else runs on the machine, so the
    ratios are fair even when the absolute times are not (shared CPUs); ratios use the minimum.
    """
    import torch

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    steps = {r: make_step(r, args, dev) for r in rows}
    params = sum(p.numel() for p in build(args.size, 0, "cpu", torch.float32).parameters())
    first: dict[str, float] = {}
    for i in range(args.warmup):
        for r in rows:
            t0 = time.perf_counter()
            steps[r]()
            if i == 0:
                first[r] = time.perf_counter() - t0  # the first step includes any compile
    times: dict[str, list[float]] = {r: [] for r in rows}
    cpu: dict[str, list[float]] = {r: [] for r in rows}
    for _ in range(args.repeats):
        for r in rows:
            _sync(dev)
            t0, c0 = time.perf_counter(), time.process_time()
            steps[r]()
            _sync(dev)
            times[r].append(time.perf_counter() - t0)
            cpu[r].append(time.process_time() - c0)
    tokens = args.M * args.T
    # cpu_s: this process's CPU time (all its threads) per step; on a shared CPU it is less
    # disturbed by other jobs than wall time (on CUDA it only counts the host side)
    return {r: {"row": r, "K": None if r == "plain" else args.K, "params": params, "tokens_per_step": tokens,
                "s_min": min(t), "s_median": statistics.median(t), "tokens_per_s": tokens / min(t),
                "cpu_s_min": min(cpu[r]), "tokens_per_cpu_s": tokens / min(cpu[r]), "first_step_s": first.get(r)}
            for r, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="cpu-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--K", type=int, default=2, help="inner steps of the meta-step")
    ap.add_argument("--M", type=int, default=4, help="documents per step (meta-batch)")
    ap.add_argument("--T", type=int, default=64, help="document length in tokens")
    ap.add_argument("--TQ", type=int, default=16, help="query length in tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", default="plain,meta2,meta2c,meta2_t1,meta1",
                    help="comma-separated: plain, meta2, meta2c (compiled), meta2_t1, meta1")
    ap.add_argument("--out", default=None, help="write the JSON here (default: print only)")
    ap.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: measure one row in this process
    ap.add_argument("--timing", default=None, help=argparse.SUPPRESS)  # internal: time these rows here
    args = ap.parse_args()
    if args.row:
        print(json.dumps(measure_memory(args)))
        return
    if args.timing:
        print(json.dumps(measure_times(args, args.timing.split(","))))
        return
    rows = [n if n == "plain" else f"meta2c_k{args.K}" if n == "meta2c" else
            n.replace("meta2", f"meta2_k{args.K}", 1).replace("meta1", f"meta1_k{args.K}", 1) for n in args.rows.split(",")]
    common = []
    for k in ("size", "device", "precision", "K", "M", "T", "TQ", "repeats", "warmup", "threads"):
        common += [f"--{k}", str(getattr(args, k))]

    def sub(extra: list[str]) -> str:
        res = subprocess.run([sys.executable, __file__, *extra, *common], capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            raise SystemExit(f"{extra} failed:\n{res.stderr[-2000:]}")
        return res.stdout.strip().splitlines()[-1]

    timing = json.loads(sub(["--timing", ",".join(rows)]))
    results = [{**timing[r], **json.loads(sub(["--row", r]))} for r in rows]
    base = next((r["tokens_per_s"] for r in results if r["row"] == "plain"), None)
    base_cpu = next((r["tokens_per_cpu_s"] for r in results if r["row"] == "plain"), None)
    for r in results:
        r["fraction_of_plain"] = r["tokens_per_s"] / base if base else None
        r["fraction_of_plain_cpu"] = r["tokens_per_cpu_s"] / base_cpu if base_cpu else None
    out = {"command": "python experiments/bench_meta_throughput.py " + " ".join(sys.argv[1:]),
           "hardware": (f"{torch_device_name(args.device)}; {os.cpu_count()} CPU cores visible, "
                        f"torch threads {args.threads}"),
           "settings": {k: getattr(args, k) for k in ("size", "device", "precision", "K", "M", "T", "TQ", "repeats")},
           "rows": results}
    print(f"{'row':<14}{'tokens/s':>12}{'fraction':>10}{'s/step':>9}{'cpu frac':>9}{'peak MiB':>10}  kind (CPU: minus RSS before the model)")
    for r in results:
        extra = f" ({r['peak_mem_mib'] - r['rss_before_model_mib']:.1f})" if "rss_before_model_mib" in r else ""
        print(f"{r['row']:<14}{r['tokens_per_s']:>12.1f}{r['fraction_of_plain']:>10.3f}{r['s_min']:>9.3f}"
              f"{r['fraction_of_plain_cpu']:>9.3f}{r['peak_mem_mib']:>10.1f}  {r['peak_mem_kind']}{extra}")
    if args.out:
        from metacl.utils import write_json_atomic

        write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
