"""The world-v2 baselines table (issue 16) as markdown, from the runs of experiments/baselines_v2.sh.

Reads RUNS/TAG/<strategy>/{tune.json,final/summary.json} for every strategy that has finished
(tuning + all final seeds), or the copies the script makes in docs (DOCS/<strategy>/{tune.json,summary.json}),
so the committed table can be rebuilt without the runs, and prints one row each: the flags chosen on tl_val, honest TL / NF / epoch,
paper TL / NF, seeds. Strategies still tuning are listed as not finished.

    python experiments/baselines_v2_report.py runs/bv2/baselines_v2 --json docs/results/baselines_v2_table/rows.json
    python experiments/baselines_v2_report.py docs/results/baselines_v2_table --json docs/results/baselines_v2_table/rows.json
"""
import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="RUNS/TAG of experiments/baselines_v2.sh")
    ap.add_argument("--json")
    a = ap.parse_args()
    rows, unfinished = [], []
    for d in sorted(p for p in Path(a.root).iterdir() if p.is_dir()):
        s, t = d / "final" / "summary.json", d / "tune.json"
        if not s.is_file():
            s = d / "summary.json"  # a docs copy
        if not (s.is_file() and t.is_file()):
            unfinished.append(d.name)
            continue
        agg = json.loads(s.read_text())["aggregate"]
        tune = json.loads(t.read_text())
        h, p = agg["honest"], agg["paper"]
        rows.append({"strategy": d.name, "chosen": tune["chosen_flags"],
                     "honest_tl": h["tl_acc"]["mean"], "honest_tl_std": h["tl_acc"].get("std", 0.0),
                     "honest_nf": h["nf_acc"]["mean"], "honest_epoch": h["epoch"]["mean"],
                     "paper_tl": p["tl_acc"]["mean"], "paper_nf": p["nf_acc"]["mean"],
                     "seeds": len(h["tl_acc"].get("values", []))})
    rows.sort(key=lambda r: -r["honest_tl"])
    print("| strategy | chosen on tl_val | honest TL | honest NF | epoch | paper TL | paper NF | seeds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | `{r['chosen']}` | {r['honest_tl']:.3f} ± {r['honest_tl_std']:.3f} | {r['honest_nf']:.3f} | "
              f"{r['honest_epoch']:.1f} | {r['paper_tl']:.3f} | {r['paper_nf']:.3f} | {r['seeds']} |")
    if unfinished:
        print(f"\nnot finished: {', '.join(unfinished)}")
    if a.json:
        from metacl.utils import write_json_atomic

        write_json_atomic(a.json, {"root": a.root, "rows": rows, "unfinished": unfinished})


if __name__ == "__main__":
    main()
