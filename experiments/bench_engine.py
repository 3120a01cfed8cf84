"""Benchmark of metacl.engine: time and peak memory of meta-steps vs a plain step and `higher`.

Why this design:
- `higher` 0.2.1 cannot patch HF Llama under transformers 5, so every comparison with it runs on
  `BenchLM`, a plain-PyTorch Llama-style LM (RMSNorm, causal attention, SwiGLU) of ~5M params.
  The same rows for our engine are also run on an HF `LlamaForCausalLM` of the same shape.
- Memory: every row runs in a fresh subprocess with glibc's mmap threshold at 64 KiB (large
  tensors are returned to the OS when freed, so RSS follows live tensors). The peak-RSS counter
  (VmHWM) is reset through /proc/self/clear_refs just before one measured call; the reported
  "peak MiB" is VmHWM minus RSS at that moment: extra memory the step needed at its peak
  (activations, autograd graph, gradients, optimizer temporaries), not model weights.
- Time: all rows of one model family run in ONE process, interleaved round-robin for
  `--repeats` rounds after a warm-up round (the 2 cores are shared with other jobs, so every
  row sees the same background load); ratios use the minimum, the median is reported too.
  torch runs at 1 thread.

    python experiments/bench_engine.py            # all rows -> docs/results/bench_engine/*.json
    python experiments/bench_engine.py --only meta2_k1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "bench_engine"

# name -> (model family, kind, extra)
ROWS = {
    "plain_step": ("plain", "plain", {}),
    "meta2_k1": ("plain", "meta", {"K": 1}),
    "meta1_k1": ("plain", "meta", {"K": 1, "first_order": True}),
    # the same meta-steps through engine.compiled_unroll_loss (one torch.compile'd function; its first step compiles)
    "meta2c_k1": ("plain", "meta_compiled", {"K": 1}),
    "meta1c_k1": ("plain", "meta_compiled", {"K": 1, "first_order": True}),
    "higher_k1": ("plain", "higher", {"K": 1}),
    "per_example_m8": ("plain", "per_example", {"M": 8}),
    "higher_loop_m8": ("plain", "higher_loop", {"M": 8}),
    "engine_loop_m8": ("plain", "engine_loop", {"M": 8}),
    **{f"meta2_k{k}": ("plain", "meta", {"K": k}) for k in (2, 4, 8)},
    **{f"meta2_k{k}_ckpt": ("plain", "meta", {"K": k, "checkpoint": True}) for k in (1, 2, 4, 8)},
    # checkpoint=n: inputs kept every n steps, the rest replayed in backward (n = K: memory flat in K)
    "meta2_k8_replay": ("plain", "meta", {"K": 8, "checkpoint": 8}),
    "meta2_k8_replay3": ("plain", "meta", {"K": 8, "checkpoint": 3}),
    "hf_plain_step": ("hf", "plain", {}),
    "hf_meta2_k1": ("hf", "meta", {"K": 1}),
    "hf_meta1_k1": ("hf", "meta", {"K": 1, "first_order": True}),
    "hf_per_example_m8": ("hf", "per_example", {"M": 8}),
    "hf_engine_loop_m8": ("hf", "engine_loop", {"M": 8}),
}
# rows that need neither `higher` nor the plain-PyTorch model: what the GPU check runs
GPU_ROWS = ["hf_plain_step", "hf_meta2_k1", "hf_meta1_k1", "hf_per_example_m8", "hf_engine_loop_m8"]
# --hf-size: the HF Llama shape of the hf_ rows (5m = DIMS; 134m = GPT-2-small width/depth, 32k vocab)
DIMS = dict(vocab=4096, d=256, layers=4, heads=4, ffn=688)
HF_SIZES = {"5m": DIMS, "134m": dict(vocab=32000, d=768, layers=12, heads=12, ffn=2048), "tiny": dict(vocab=256, d=32, layers=2, heads=4, ffn=64)}
B, T, TQ = 4, 64, 32  # inner batch (B x T tokens), query length
LR = 1e-4


def build_plain(seed: int):
    import torch
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self, d: int):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    class Block(nn.Module):
        def __init__(self, d: int, heads: int, ffn: int):
            super().__init__()
            self.heads = heads
            self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
            self.qkv, self.o = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
            self.gate, self.up, self.down = nn.Linear(d, ffn, bias=False), nn.Linear(d, ffn, bias=False), nn.Linear(ffn, d, bias=False)

        def forward(self, x):
            Bn, Tn, D = x.shape
            q, k, v = (t.view(Bn, Tn, self.heads, -1).transpose(1, 2) for t in self.qkv(self.n1(x)).split(D, -1))
            att = (q @ k.transpose(-1, -2)) / math.sqrt(D // self.heads)
            mask = torch.ones(Tn, Tn, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(-1)
            x = x + self.o((att @ v).transpose(1, 2).reshape(Bn, Tn, D))
            h = self.n2(x)
            return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))

    class BenchLM(nn.Module):
        def __init__(self, vocab, d, layers, heads, ffn):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(512, d)
            self.blocks = nn.ModuleList([Block(d, heads, ffn) for _ in range(layers)])
            self.norm, self.head = RMSNorm(d), nn.Linear(d, vocab, bias=False)

        def forward(self, input_ids, attention_mask=None):
            x = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[-1], device=input_ids.device))
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x))

    torch.manual_seed(seed)
    return BenchLM(**DIMS)


def build_hf(seed: int, size: str = "5m"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    dims = HF_SIZES[size]
    cfg = LlamaConfig(hidden_size=dims["d"], intermediate_size=dims["ffn"], num_hidden_layers=dims["layers"],
                      num_attention_heads=dims["heads"], num_key_value_heads=dims["heads"], vocab_size=dims["vocab"],
                      max_position_embeddings=512)
    return LlamaForCausalLM(cfg)


def make_batch(gen, Bn: int, Tn: int, lead=(), vocab: int = DIMS["vocab"], device="cpu"):
    import torch

    ids = torch.randint(0, vocab, (*lead, Bn, Tn), generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": ids.clone().to(device)}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def build_row(name: str, seed: int, device: str = "cpu", precision: str = "fp32", hf_size: str = "5m"):
    """The row's step function (one full meta-step or training step) and its description."""
    import torch

    from metacl.engine import adamw, lm_loss, per_example_loss, unroll
    from metacl.precision import autocast

    if device == "cpu":
        torch.set_num_threads(1)
    family, kind, extra = ROWS[name]
    model = (build_plain(seed) if family == "plain" else build_hf(seed, hf_size)).to(device)
    vocab = DIMS["vocab"] if family == "plain" else HF_SIZES[hf_size]["vocab"]
    gen = torch.Generator().manual_seed(seed)
    n_params = sum(p.numel() for p in model.parameters())
    K, M = extra.get("K", 1), extra.get("M", 1)
    params = dict(model.named_parameters())

    def rand(*shape):
        return torch.rand(*shape, generator=gen).to(device).requires_grad_(True)

    if kind in ("plain", "meta", "meta_compiled", "higher"):
        docs = [make_batch(gen, B, T, vocab=vocab, device=device) for _ in range(K)]
        query = make_batch(gen, B, TQ, vocab=vocab, device=device)
        weights = [rand(B, T) for _ in range(K)]
    else:  # M independent meta-examples, one document + one query each
        docs_m = make_batch(gen, 1, T, lead=(M,), vocab=vocab, device=device)
        query_m = make_batch(gen, 1, TQ, lead=(M,), vocab=vocab, device=device)
        weights_m = rand(M, 1, T)

    import inspect

    # older metacl (the `before` column of docs/benchmarks.md) has no return_state
    no_state = {"return_state": False} if "return_state" in inspect.signature(unroll).parameters else {}
    if kind == "plain":  # one weighted fine-tuning step with torch.optim.AdamW
        opt = torch.optim.AdamW(model.parameters(), lr=LR)

        def step():
            lm_loss(model, params, docs[0], weights[0]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            weights[0].grad = None

    elif kind == "meta":  # meta-gradient w.r.t. token weights and initial params through K AdamW steps
        # token weights travel in the batch: loss_fn must be pure (checkpointing re-runs it)
        docs_w = [dict(d, token_weights=w) for d, w in zip(docs, weights)]

        def step():
            pK, _ = unroll(model, params, lm_loss, docs_w, optimizer=adamw(lr=LR),
                           first_order=extra.get("first_order", False), checkpoint=extra.get("checkpoint", False))
            lm_loss(model, pK, query).backward()
            model.zero_grad(set_to_none=True)
            for w in weights:
                w.grad = None

    elif kind == "meta_compiled":  # the meta-step above as one compiled function (same math: tests/test_compiled_unroll.py)
        from metacl.engine.compiled_unroll import compiled_unroll_loss

        assert K == 1, "meta_compiled rows take one inner batch, used at every step"
        cstep = compiled_unroll_loss(model, lm_loss, lm_loss, adamw(lr=LR), steps=K,
                                     first_order=extra.get("first_order", False))
        inner = {k: v[None] for k, v in dict(docs[0], token_weights=weights[0]).items()}
        outer = {k: v[None] for k, v in query.items()}

        def step():
            cstep(params, inner, outer)[:, 0].mean().backward()
            model.zero_grad(set_to_none=True)
            for w in weights:
                w.grad = None

    elif kind == "higher":
        import higher

        opt = torch.optim.Adam(model.parameters(), lr=LR)

        def step():
            with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fm, dopt):
                for k in range(K):
                    dopt.step(_weighted_ce(fm(docs[k]["input_ids"]), docs[k]["labels"], weights[k]))
                _weighted_ce(fm(query["input_ids"]), query["labels"], None).backward()
            model.zero_grad(set_to_none=True)
            for w in weights:
                w.grad = None

    elif kind == "per_example":
        docs_pe = dict(docs_m, token_weights=weights_m)

        def step():
            pK, _ = unroll(model, params, lm_loss, [docs_pe], optimizer=adamw(lr=LR), per_example=True, **no_state)
            per_example_loss(model, pK, query_m).sum().backward()
            model.zero_grad(set_to_none=True)
            weights_m.grad = None

    elif kind == "engine_loop":
        def step():
            for m in range(M):
                doc = {k: v[m] for k, v in docs_m.items()}
                pK, _ = unroll(model, params, lambda mm, p, b: lm_loss(mm, p, b, weights_m[m]), [doc], optimizer=adamw(lr=LR))
                lm_loss(model, pK, {k: v[m] for k, v in query_m.items()}).backward()
            model.zero_grad(set_to_none=True)
            weights_m.grad = None

    elif kind == "higher_loop":
        import higher

        opt = torch.optim.Adam(model.parameters(), lr=LR)

        def step():
            for m in range(M):
                with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fm, dopt):
                    dopt.step(_weighted_ce(fm(docs_m["input_ids"][m]), docs_m["labels"][m], weights_m[m]))
                    _weighted_ce(fm(query_m["input_ids"][m]), query_m["labels"][m], None).backward()
            model.zero_grad(set_to_none=True)
            weights_m.grad = None

    else:
        raise ValueError(kind)
    info = {
        "name": name, "family": family, "kind": kind, **extra, "params": n_params, "seed": seed,
        "batch": {"B": B, "T": T, "TQ": TQ} if kind in ("plain", "meta", "higher") else {"M": M, "B": 1, "T": T, "TQ": TQ},
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "device": device if device == "cpu" else torch.cuda.get_device_name(torch.device(device)),
        "precision": precision, **({"hf_size": hf_size} if family == "hf" else {}),
    }

    def run():  # bf16: autocast forward passes (fp32 master weights), as `--precision bf16` does
        with autocast(precision, device):
            step()
    return run, info


def measure_memory(name: str, seed: int, device: str = "cpu", precision: str = "fp32", hf_size: str = "5m") -> dict:
    """Fresh process, one row: peak memory above the pre-step level during one call (after a warm-up).

    CPU: peak RSS (VmHWM, reset through /proc/self/clear_refs) minus RSS before the call.
    CUDA: the allocator's max_memory_allocated minus memory_allocated before the call.
    """
    import gc

    import torch

    if device == "cpu":
        torch.set_num_threads(1)
    step, info = build_row(name, seed, device, precision, hf_size)
    step()  # warm-up (allocator, lazy init)
    gc.collect()
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return {**info, "peak_extra_mib": (torch.cuda.max_memory_allocated() - base) / 2**20, "memory_kind": "cuda_max_allocated"}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _rss_bytes()
    step()
    return {**info, "peak_extra_mib": (_hwm_bytes() - base) / 2**20, "memory_kind": "cpu_rss"}


def measure_time(names: list[str], repeats: int, seed: int, device: str = "cpu", precision: str = "fp32",
                 hf_size: str = "5m") -> dict[str, dict]:
    """One process, rows interleaved round-robin: the machine is shared, so every row sees the
    same background load; min and median over `repeats` rounds after one warm-up round.
    `cpu_s_*`: this process's CPU time per step (user + system), less sensitive to other jobs."""
    import torch
    from tqdm import tqdm

    if device == "cpu":
        torch.set_num_threads(1)
    steps = {n: build_row(n, seed, device, precision, hf_size)[0] for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu_times: dict[str, list[float]] = {n: [] for n in names}
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    for r in tqdm(range(repeats + 1), desc="timing rounds"):
        for n, step in steps.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            sync()
            if r > 0:
                times[n].append(time.perf_counter() - t0)
                cpu_times[n].append(time.process_time() - c0)
    load = os.getloadavg()[0]
    return {n: {"seconds_min": min(t), "seconds_median": statistics.median(t), "seconds_all": t,
                "cpu_s_min": min(cpu_times[n]), "cpu_s_median": statistics.median(cpu_times[n]),
                "repeats": repeats, "loadavg_1min_end": load} for n, t in times.items()}


def _weighted_ce(logits, labels, w):
    """Same loss as metacl.engine.lm_loss, written for a `higher`-patched model."""
    import torch.nn.functional as F

    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="none")
    nll = nll.view(labels[:, 1:].shape)
    w = w[:, 1:] if w is not None else nll.new_ones(nll.shape)
    return (w * nll).sum() / w.sum()


def render_table(out: Path) -> str:
    """Markdown table + target checks from the JSON files (what docs/benchmarks.md shows)."""
    rows = {}
    for f in sorted(out.glob("*.json")):
        r = json.loads(f.read_text())
        rows[r["name"]] = r
    lines = ["| row | what | min s | median s | CPU s (min) | peak extra MiB |", "|---|---|---:|---:|---:|---:|"]
    what = {
        "plain_step": "weighted fine-tune step (torch AdamW)",
        "meta2_k1": "meta-step, 1 inner AdamW step, second order",
        "meta1_k1": "same, first order",
        "meta2c_k1": "`meta2_k1` compiled (`compiled_unroll_loss`)",
        "meta1c_k1": "`meta1_k1` compiled",
        "higher_k1": "`higher`, identical meta-step",
        "per_example_m8": "8 meta-examples, `per_example=True`",
        "higher_loop_m8": "8 meta-examples, `higher` loop",
        "engine_loop_m8": "8 meta-examples, loop of `unroll`",
    }
    for name in ROWS:
        if name not in rows:
            continue
        r = rows[name]
        desc = what.get(name) or what.get(name.removeprefix("hf_"), "")
        if name.startswith("meta2_k") and name != "meta2_k1":
            ck = r.get("checkpoint")
            desc = f"K={r['K']} inner steps, second order" + (
                "" if not ck else ", checkpointed" if ck is True else f", checkpoint={ck} (inputs kept every {ck} steps, rest replayed)")
        if name.startswith("hf_"):
            desc = "HF Llama: " + desc
        lines.append(f"| `{name}` | {desc} | {r.get('seconds_min', float('nan')):.3f} | {r.get('seconds_median', float('nan')):.3f} "
                     f"| {r.get('cpu_s_min', float('nan')):.3f} | {r['peak_extra_mib']:.1f} |")

    def ratio(a, b, key):
        if a not in rows or b not in rows or key not in rows[a] or key not in rows[b]:
            return float("nan")
        return rows[a][key] / rows[b][key]

    checks = [
        ("second-order meta-step / plain step (time)", ratio("meta2_k1", "plain_step", "seconds_min"), "<= 3.5"),
        ("first-order meta-step / plain step (time)", ratio("meta1_k1", "plain_step", "seconds_min"), "<= 1.6"),
        ("compiled second-order meta-step / plain step (time)", ratio("meta2c_k1", "plain_step", "seconds_min"), "<= 3.5"),
        ("compiled first-order meta-step / plain step (time)", ratio("meta1c_k1", "plain_step", "seconds_min"), "<= 1.6"),
        ("second-order / plain (CPU time of this process)", ratio("meta2_k1", "plain_step", "cpu_s_min"), "<= 3.5"),
        ("first-order / plain (CPU time of this process)", ratio("meta1_k1", "plain_step", "cpu_s_min"), "<= 1.6"),
        ("K=8 replayed (checkpoint=8) / K=1 checkpointed (peak memory)", ratio("meta2_k8_replay", "meta2_k1_ckpt", "peak_extra_mib"), "<= 1.5"),
        ("K=8 checkpoint=3 / K=1 checkpointed (peak memory)", ratio("meta2_k8_replay3", "meta2_k1_ckpt", "peak_extra_mib"), "(reference)"),
        ("metacl / higher, identical meta-step (time)", ratio("meta2_k1", "higher_k1", "seconds_min"), "<= 1.1"),
        ("metacl / higher, identical meta-step (peak memory)", ratio("meta2_k1", "higher_k1", "peak_extra_mib"), "<= 1.0"),
        ("higher loop / per_example, 8 meta-examples (speed-up)", ratio("higher_loop_m8", "per_example_m8", "seconds_min"), ">= 1.5"),
        ("K=8 / K=1 checkpointed (peak memory)", ratio("meta2_k8_ckpt", "meta2_k1_ckpt", "peak_extra_mib"), "<= 1.3"),
        ("K=8 / K=1 not checkpointed (peak memory)", ratio("meta2_k8", "meta2_k1", "peak_extra_mib"), "(reference)"),
        ("HF Llama: second-order / plain step (time)", ratio("hf_meta2_k1", "hf_plain_step", "seconds_min"), "<= 3.5"),
        ("HF Llama: loop of unroll / per_example, 8 meta-examples (speed-up)", ratio("hf_engine_loop_m8", "hf_per_example_m8", "seconds_min"), "(reference)"),
        ("HF Llama: first-order / plain step (time)", ratio("hf_meta1_k1", "hf_plain_step", "seconds_min"), "<= 1.6"),
    ]
    lines += ["", "| target | measured | goal | met |", "|---|---:|---|---|"]
    for label, val, goal in checks:
        op, num = (goal.split() + [""])[:2]
        if math.isnan(val):  # a row of this target was not run
            lines.append(f"| {label} | n/a | {goal} | |")
            continue
        met = "" if not num else ("yes" if (val <= float(num) if op == "<=" else val >= float(num)) else "**no**")
        lines.append(f"| {label} | {val:.2f} | {goal} | {met} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help=f"rows to run (default all): {', '.join(ROWS)}")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--table", action="store_true", help="print the markdown table from the JSON files and exit")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (CUDA: memory is the allocator's peak)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast forward passes")
    ap.add_argument("--hf-size", choices=list(HF_SIZES), default="5m", help="shape of the HF Llama (hf_ rows)")
    ap.add_argument("--_row", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_time", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.table:
        print(render_table(Path(args.out)))
        return 0
    if args._row:  # child process: one row's memory, result as JSON on stdout
        print("RESULT " + json.dumps(measure_memory(args._row, args.seed, args.device, args.precision, args.hf_size)))
        return 0
    if args._time:  # child process: interleaved timing of several rows
        print("RESULT " + json.dumps(measure_time(args._time.split(","), args.repeats, args.seed, args.device,
                                                  args.precision, args.hf_size)))
        return 0
    from tqdm import tqdm

    from metacl.utils import write_json_atomic

    names = args.only or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        print(f"bench_engine: unknown rows {unknown}; choose from {list(ROWS)}", file=sys.stderr)
        return 2
    # Memory children: a 64 KiB mmap threshold, so freed tensors leave RSS at once and peak RSS
    # follows live tensors. Timing children: glibc's defaults, as a user's process runs.
    env_time = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env_mem = dict(env_time, MALLOC_MMAP_THRESHOLD_="65536")

    def child(flag: str, value: str) -> dict | None:
        cmd = [sys.executable, __file__, flag, value, "--repeats", str(args.repeats), "--seed", str(args.seed),
               "--device", args.device, "--precision", args.precision, "--hf-size", args.hf_size]
        proc = subprocess.run(cmd, env=env_mem if flag == "--_row" else env_time, capture_output=True, text=True, cwd=ROOT)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{flag} {value} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            return None
        return json.loads(line[len("RESULT "):])

    results = {}
    for name in tqdm(names, desc="memory (one process per row)"):
        res = child("--_row", name)
        if res is not None:
            results[name] = res
            tqdm.write(f"{name:18s} peak +{res['peak_extra_mib']:8.1f} MiB")
    for family in ("plain", "hf"):
        fam = [n for n in names if ROWS[n][0] == family and n in results]
        if not fam:
            continue
        timing = child("--_time", ",".join(fam)) or {}
        for n, t in timing.items():
            results[n].update(t)
            tqdm.write(f"{n:18s} {t['seconds_min']*1000:9.1f} ms (min of {args.repeats})")
    command = "python experiments/bench_engine.py " + " ".join(sys.argv[1:])
    for name, res in results.items():
        write_json_atomic(Path(args.out) / f"{name}.json", {**res, "command": command.strip()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
