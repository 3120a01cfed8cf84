"""Run one step of `metacl demo --out OUT` with the demo's own `Step` code, e.g. three ckl steps in parallel.

    PYTHONPATH=$PWD python experiments/demo_step.py finetune /tmp/ux_demo   (likewise lora, taalm)

Why: on a crowded machine the demo's steps can run side by side once world, base LM and token
weighter exist; a later `metacl demo --out OUT` skips the finished steps and prints the table.
Used for docs/demo_output.md (2026-12-01), where the machine was shared.
"""
import sys
import time

from metacl.cli.config import resolve
from metacl.cli.demo import steps
from metacl.cli.main import build_parser

name, out = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "/tmp/ux_demo"
args = resolve(build_parser(["demo"]).parse_args(["demo", "--out", out]), "demo")  # the demo's defaults filled in
step = next(s for s in steps(args) if s.name == name)
print(f"[{name}] ...", flush=True)
t = time.time()
step.run()
print(f"[{name}]: {time.time() - t:.0f}s", flush=True)
