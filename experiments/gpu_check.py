"""The GPU check of issue 18: every CUDA-relevant figure in one run of at most ~8 minutes.

    experiments/gpu_check.sh --device cuda --out DIR      # on the GPU machine (one H200-class GPU)
    experiments/gpu_check.sh --device cpu --tiny --out DIR   # dry run: same sections, tiny sizes

Why one driver: a GPU lease is short and has no internet, so the check must be prepared to
the minute, import nothing the GPU image lacks (`datasets`, `faker` and `higher` may be
absent; nothing here or in the sections imports them), and survive one failing section. Each
section runs in its own subprocess with its own timeout; a global budget (`--budget-s`)
skips what would not fit. Everything lands in DIR/gpu_check.json, DIR/gpu_check.md (a
markdown table) and DIR/gpu_check.log; benchmark scratch files stay in a temporary folder
(the device tool brings back at most 8 files).

Sections:
- `env`: torch / CUDA / transformers / peft versions, device name, which optional packages exist;
- `tests`: pytest on the tests that behave differently on CUDA (tests/test_engine_cuda.py with
  METACL_TEST_DEVICE set to the device), the engine speed tests and the engine tests;
- `bench_engine_5m`, `bench_engine_134m`: bench_engine's HF rows (plain step, second-order and
  first-order meta-step, per_example M=8 vs a loop of unroll), bf16 autocast, eager attention
  for second order (unroll switches it), time and peak memory;
- `meta_134m`: a token-weighting meta-step (K=2, M=8, T=256) at 134M bf16, tokens/s as a
  fraction of plain fine-tuning, peak memory;
- `lo_100m`: LearnedOptimizer.step vs fused torch AdamW on a 100M-parameter Linear stack.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def section_env(device: str) -> dict:
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "cuda": torch.version.cuda, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["device_memory_gib"] = round(torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30, 1)
    from importlib import metadata

    # versions from package metadata: importing transformers/matplotlib here would only cost time
    for dist in ("transformers", "peft", "safetensors", "datasets", "faker", "higher", "tqdm", "pyyaml", "matplotlib", "scikit-learn"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    return info


def section_lo(device: str, width: int, layers: int, steps: int) -> dict:
    """Seconds per optimizer.step() and peak memory: LearnedOptimizer vs (fused) torch AdamW."""
    import torch
    from torch import nn

    from metacl.optim import LearnedOptimizer

    dev = torch.device(device)
    out = {}
    for name in ("adamw_fused" if dev.type == "cuda" else "adamw", "learned"):
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)]).to(dev)
        n = sum(p.numel() for p in model.parameters())
        if name.startswith("adamw"):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if dev.type == "cuda" else {}))
        else:
            opt = LearnedOptimizer.pretrained(model.parameters(), total_steps=100)
        x = torch.randn(8, width, device=dev)
        ts = []
        for i in range(steps + 1):
            opt.zero_grad(set_to_none=True)
            model(x).pow(2).mean().backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()
                if i == 1:
                    torch.cuda.reset_peak_memory_stats(dev)
                    base = torch.cuda.memory_allocated(dev)
            t0 = time.perf_counter()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i > 0:
                ts.append(time.perf_counter() - t0)
        row = {"params": n, "step_s_min": min(ts), "step_s_mean": sum(ts) / len(ts)}
        if dev.type == "cuda":
            row["peak_extra_mib"] = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
        out[name] = row
        del model, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    base_name = next(k for k in out if k.startswith("adamw"))
    out["learned_over_adamw_time"] = out["learned"]["step_s_min"] / out[base_name]["step_s_min"]
    return out


def run(cmd: list[str], timeout: float, env: dict, log) -> tuple[int, float, str]:
    t0 = time.time()
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=timeout)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = 124
        text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        text += "\n[timed out]"
    log.write(text[-20000:])
    log.flush()
    return rc, time.time() - t0, text


def plan(args) -> list[dict]:
    """The sections: name, command, timeout (s), and how to read the result."""
    tiny = args.tiny
    scratch = Path(args.scratch)
    rows = "hf_plain_step hf_meta2_k1 hf_meta1_k1 hf_per_example_m8 hf_engine_loop_m8".split()
    if tiny:  # one row of each code path: each row is a process of its own (memory), which is what costs
        rows = "hf_plain_step hf_meta2_k1 hf_per_example_m8".split()
    reps = "1" if tiny else "3"
    be = lambda size, out: [PY, "experiments/bench_engine.py", "--only", *rows, "--device", args.device,  # noqa: E731
                            "--precision", "bf16", "--hf-size", size, "--repeats", reps, "--out", str(scratch / out)]
    tests = (["tests/test_engine_cuda.py", "-k", "learned or per_example"] if tiny
             else ["tests/test_engine_cuda.py", "tests/test_engine_speed.py", "tests/test_engine.py"])
    meta = [PY, "experiments/bench_meta_throughput.py", "--device", args.device, "--precision", "bf16", "--K", "2",
            "--out", str(scratch / "meta.json")]
    meta += (["--size", "cpu-small", "--M", "2", "--T", "32", "--TQ", "8", "--repeats", "1", "--warmup", "1", "--rows", "plain,meta2"]
             if tiny else ["--size", "134m", "--M", "8", "--T", "256", "--TQ", "32", "--repeats", "3", "--warmup", "1",
                           "--rows", "plain,meta2,meta1", "--threads", "8"])
    lo = [PY, __file__, "--_lo", "--device", args.device] + (["--lo-width", "64", "--lo-layers", "2"] if tiny else [])
    return [
        {"name": "env", "cmd": [PY, __file__, "--_env", "--device", args.device], "timeout": 60},
        {"name": "tests", "cmd": [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], "timeout": 120 if tiny else 100},
        {"name": "bench_engine_5m", "cmd": be("tiny" if tiny else "5m", "be_5m"), "timeout": 300 if tiny else 70, "dir": scratch / "be_5m"},
        *([] if tiny else  # tiny: the same code as bench_engine_5m
          [{"name": "bench_engine_134m", "cmd": be("134m", "be_134m"), "timeout": 110, "dir": scratch / "be_134m"}]),
        {"name": "meta_134m", "cmd": meta, "timeout": 300 if tiny else 110, "file": scratch / "meta.json"},
        {"name": "lo_100m", "cmd": lo, "timeout": 120 if tiny else 45},
    ]


def parse(sec: dict, rc: int, text: str) -> dict:
    if "dir" in sec:
        d = Path(sec["dir"])
        return {p.stem: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))} if d.is_dir() else {}
    if "file" in sec:
        f = Path(sec["file"])
        return json.loads(f.read_text()) if f.exists() else {}
    if sec["name"] == "tests":
        tail = [l for l in text.strip().splitlines() if " passed" in l or " failed" in l or " error" in l]
        return {"summary": tail[-1] if tail else text.strip().splitlines()[-1:]}
    line = next((l for l in reversed(text.splitlines()) if l.startswith("RESULT ")), None)
    return json.loads(line[len("RESULT "):]) if line else {}


def markdown(report: dict) -> str:
    env = report["sections"].get("env", {}).get("result", {})
    lines = [f"# GPU check ({env.get('device_name', report['device'])}; torch {env.get('torch')}, CUDA {env.get('cuda')})", "",
             f"command: `{report['command']}`; total {report['wall_s']:.0f} s" + ("; **tiny dry run**" if report["tiny"] else ""), "",
             "| section | status | wall s |", "|---|---|---:|"]
    for name, s in report["sections"].items():
        lines.append(f"| {name} | {s['status']} | {s.get('wall_s', 0):.0f} |")
    for name in ("bench_engine_5m", "bench_engine_134m"):
        res = report["sections"].get(name, {}).get("result") or {}
        if not res:
            continue
        plain = res.get("hf_plain_step", {}).get("seconds_min")
        lines += ["", f"## {name} (HF Llama, bf16 autocast)", "", "| row | params | min s | x plain | peak extra MiB |", "|---|---:|---:|---:|---:|"]
        for row, r in res.items():
            t = r.get("seconds_min", float("nan"))
            lines.append(f"| `{row}` | {r.get('params', 0) / 1e6:.1f}M | {t:.4f} | {t / plain if plain else float('nan'):.2f} | {r.get('peak_extra_mib', float('nan')):.0f} |")
        if "hf_engine_loop_m8" in res and "hf_per_example_m8" in res:
            sp = res["hf_engine_loop_m8"]["seconds_min"] / res["hf_per_example_m8"]["seconds_min"]
            lines.append(f"\nper_example M=8 is {sp:.2f}x as fast as a loop of 8 unrolls.")
    meta = report["sections"].get("meta_134m", {}).get("result") or {}
    if meta.get("rows"):
        lines += ["", "## token-weighting meta-step (bf16)", "", f"settings: `{json.dumps(meta.get('settings'))}`", "",
                  "| row | tokens/s | fraction of plain | s/step | peak MiB |", "|---|---:|---:|---:|---:|"]
        for r in meta["rows"]:
            lines.append(f"| `{r['row']}` | {r['tokens_per_s']:.0f} | {r['fraction_of_plain']:.3f} | {r['s_min']:.3f} | {r['peak_mem_mib']:.0f} |")
    lo = report["sections"].get("lo_100m", {}).get("result") or {}
    if lo:
        lines += ["", "## learned optimizer step vs AdamW", "", "| optimizer | params | step s (min) | peak extra MiB |", "|---|---:|---:|---:|"]
        for k, r in lo.items():
            if isinstance(r, dict):
                lines.append(f"| {k} | {r['params'] / 1e6:.1f}M | {r['step_s_min']:.4f} | {r.get('peak_extra_mib', float('nan')):.0f} |")
        lines.append(f"\nlearned / AdamW step time: {lo.get('learned_over_adamw_time', float('nan')):.2f}x")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="folder for gpu_check.json / .md / .log")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, 1 repeat: a dry run of every section (CPU is fine)")
    ap.add_argument("--budget-s", type=float, default=470.0, help="skip sections that would not fit in this total")
    ap.add_argument("--only", nargs="*", default=None, help="run only these sections")
    ap.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_env", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_lo", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lo-width", type=int, default=4096)
    ap.add_argument("--lo-layers", type=int, default=6)
    args = ap.parse_args()
    if args._env:
        print("RESULT " + json.dumps(section_env(args.device)))
        return 0
    if args._lo:
        print("RESULT " + json.dumps(section_lo(args.device, args.lo_width, args.lo_layers, steps=5)))
        return 0
    if not args.out:
        print("gpu_check: --out DIR is required (where gpu_check.json/.md/.log go)", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"gpu_check: --device {args.device} but torch {torch.__version__} sees no CUDA device; "
                  "use --device cpu --tiny for a dry run", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               METACL_TEST_DEVICE=args.device, PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    t_start = time.time()
    report = {"command": "experiments/gpu_check.sh " + " ".join(sys.argv[1:]), "device": args.device, "tiny": args.tiny,
              "sections": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp, open(out / "gpu_check.log", "w") as log:
        args.scratch = tmp
        for sec in plan(args):
            if args.only and sec["name"] not in args.only:
                continue
            left = args.budget_s - (time.time() - t_start)
            if left < min(sec["timeout"], 30):
                report["sections"][sec["name"]] = {"status": f"skipped (budget: {left:.0f} s left)"}
                continue
            rc, wall, text = run(sec["cmd"], min(sec["timeout"], left), env, log)
            try:
                result = parse(sec, rc, text)
            except Exception as e:  # noqa: BLE001 - one unreadable section must not lose the others
                result = {"parse_error": f"{type(e).__name__}: {e}"}
            status = "ok" if rc == 0 else ("timed out" if rc == 124 else f"failed (rc {rc})")
            report["sections"][sec["name"]] = {"status": status, "rc": rc, "wall_s": wall, "result": result}
            print(f"gpu_check: {sec['name']:<18} {status:<14} {wall:6.1f} s", flush=True)
    report["wall_s"] = time.time() - t_start
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print((out / "gpu_check.md").read_text())
    return 0 if all(s["status"] == "ok" for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
