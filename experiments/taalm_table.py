"""One table + plot for the token-weighting runs, from each run's metrics.jsonl.

Why not `metacl ckl compare`: runs stopped early for lack of CPU have complete seeds in
metrics.jsonl but no summary.json; only seeds with every epoch 0..EPOCHS are counted, and the
table says how many seeds each row has.
    python experiments/taalm_table.py --epochs 8 --out docs/results/taalm_table runs/taalm/ckl_finetune \
        taalm=runs/taalm/ckl_taalm,runs/taalm/ckl_taalm_s1,runs/taalm/ckl_taalm_s2 ...
"""
import argparse
import json
from pathlib import Path

from metacl.ckl.report import plot_runs, read_rows, summarize, table_markdown
from metacl.utils import write_json_atomic


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds")
    a = ap.parse_args()
    named, small = [], {}
    for r in a.runs:  # DIR, or NAME=DIR1,DIR2 to merge seeds run in separate folders
        name, _, dirs = r.rpartition("=")
        dirs = dirs.split(",")
        rows = [x for d in dirs for x in read_rows(Path(d) / "metrics.jsonl")]
        if a.seeds is not None:
            rows = [x for x in rows if x["seed"] in a.seeds]
        done = {s for s in {x["seed"] for x in rows}
                if {x["epoch"] for x in rows if x["seed"] == s} >= set(range(a.epochs + 1))}
        rows = [x for x in rows if x["seed"] in done]
        if not rows:
            print(f"{r}: no complete seed, skipped")
            continue
        name = name or Path(dirs[0]).name.removeprefix("ckl_")
        summ = summarize(rows)
        named.append((name, summ))
        small[name] = {"seeds": sorted(done), "aggregate": summ["aggregate"], "curves": summ["curves"]}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = table_markdown(named)
    (out / "table.md").write_text(table)
    write_json_atomic(out / "summary.json", small)
    plot_runs(named, out / "plot.png")
    print(table)


if __name__ == "__main__":
    main()
