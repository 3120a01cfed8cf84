"""Run one benchmark command on the code of an older commit ("before") and on this tree ("after").

Why: speed claims need a before column measured under the same conditions. The benchmark
script itself is always this tree's (so both columns measure the same thing); only the
`metacl` package differs: the older commit's `metacl/` is extracted with `git archive` into a
temporary folder and put first on PYTHONPATH. Runs alternate before/after for `--rounds`
rounds so that background load hits both alike; each run writes its own JSON.

    python experiments/bench_before_after.py --before cfa48ef --out runs/ba_meta_small -- \
        experiments/bench_meta_throughput.py --size small --device cpu --K 2 --M 4 --T 64 --repeats 2 --warmup 1 --threads 2
The benchmark's own `--out` is appended by this script (a file for bench_meta_throughput, a
folder for bench_engine). Summary: OUT/summary.json.
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


def extract(commit: str, dest: Path) -> None:
    archive = subprocess.run(["git", "archive", commit, "metacl"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="cfa48ef", help="commit whose metacl/ is the 'before' code")
    ap.add_argument("--out", required=True, help="folder for the runs' JSON and summary.json")
    ap.add_argument("--rounds", type=int, default=1, help="before/after pairs, alternating")
    ap.add_argument("bench", nargs=argparse.REMAINDER, help="-- SCRIPT ARGS... (a script under experiments/)")
    args = ap.parse_args()
    bench = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if not bench:
        print("bench_before_after: give the benchmark after --, e.g. -- experiments/bench_engine.py --only plain_step", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="metacl_before_") as tmp:
        extract(args.before, Path(tmp))
        for r in range(args.rounds):
            for label, path in (("before", tmp), ("after", str(ROOT))):
                target = out / f"{label}_{r}" if "bench_engine" in bench[0] else out / f"{label}_{r}.json"
                env = dict(os.environ, PYTHONPATH=path + os.pathsep + os.environ.get("PYTHONPATH", ""))
                t0 = time.time()
                proc = subprocess.run([sys.executable, *bench, "--out", str(target)], cwd=ROOT, env=env, text=True,
                                      capture_output=True)
                print(proc.stdout[-3000:])
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                runs.append({"label": label, "round": r, "json": str(target), "wall_s": time.time() - t0})
    summary = {"command": "python experiments/bench_before_after.py " + " ".join(sys.argv[1:]),
               "before_commit": args.before, "after": "this tree", "runs": runs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
