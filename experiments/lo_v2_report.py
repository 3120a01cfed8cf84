"""Issue 15's table: the learned optimizer against a tuned AdamW, from the stage folders of lo_v2_table.sh.

    python experiments/lo_v2_report.py --out docs/results/lo_v2_table --optimizer runs/lo_lm2 \
        adamw=runs/lo_v2/adamw learned=runs/lo_v2/learned ... oracle=runs/lo_v2/oracle random=runs/lo_v2/random

Each NAME=DIR is a `metacl ckl tune` folder (its `final/` run holds the chosen point on every seed) or
a plain `metacl ckl run` folder. Per row and protocol (honest = epoch chosen on tl_val, first; paper =
best epoch on TL): TL and NF accuracy (mean over seeds), their difference to the `adamw` row, and

    closure = (TL(row) - TL(adamw)) / (TL(oracle) - TL(adamw))

(the share of the oracle token weighting's gain over AdamW, the column every meta-learner table has).
The goal of issue 15 is checked on the honest protocol: TL(learned) >= TL(adamw) and
NF(learned) >= NF(adamw) + 0.15. Writes summary.json (rows, goal, tuning choices, the optimizer's
meta-training summary), table.md and plot.png, and copies each stage's tune.json under tune/.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from metacl.ckl.report import closure, plot_runs, read_rows, summarize
from metacl.utils import write_json_atomic

GOAL_NF_GAIN = 0.15


def load(d: Path) -> tuple[dict, dict | None]:
    """(summary of the run's seeds, tune.json or None) of a tune folder or a ckl run folder."""
    tune = json.loads((d / "tune.json").read_text()) if (d / "tune.json").exists() else None
    run = d / tune["final"] if tune and tune.get("final") else d
    rows = read_rows(run / "metrics.jsonl")
    if not rows:
        raise SystemExit(f"{run}: no rows in metrics.jsonl; run its stage of experiments/lo_v2_table.sh first")
    return summarize(rows), tune


def table_rows(aggs: dict[str, dict], protocol: str) -> list[dict]:
    """One dict per row: TL, NF, their deltas to adamw, closure against the oracle."""
    for need in ("adamw", "oracle"):
        if need not in aggs:
            raise SystemExit(f"no '{need}' row among {sorted(aggs)}; the table needs both references")
    tl = {k: a[protocol]["tl_acc"]["mean"] for k, a in aggs.items()}
    nf = {k: a[protocol]["nf_acc"]["mean"] for k, a in aggs.items()}
    return [{"row": k, "seeds": len(aggs[k][protocol]["tl_acc"]["values"]),
             "tl_acc": tl[k], "tl_std": aggs[k][protocol]["tl_acc"]["std"],
             "nf_acc": nf[k], "nf_std": aggs[k][protocol]["nf_acc"]["std"],
             "tl_minus_adamw": tl[k] - tl["adamw"], "nf_minus_adamw": nf[k] - nf["adamw"],
             "closure": closure(tl[k], tl["adamw"], tl["oracle"])} for k in aggs]


def markdown(rows: list[dict], protocol: str, chosen: dict[str, str]) -> str:
    out = [f"**{protocol}** protocol", "",
           "| row | chosen on tl_val | seeds | TL acc | NF acc | TL - adamw | NF - adamw | closure |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = "n/a" if r["closure"] is None else f"{r['closure']:.3f}"
        out.append(f"| {r['row']} | {chosen.get(r['row'], '')} | {r['seeds']} | {r['tl_acc']:.3f} ± {r['tl_std'] or 0:.3f} | "
                   f"{r['nf_acc']:.3f} ± {r['nf_std'] or 0:.3f} | {r['tl_minus_adamw']:+.3f} | {r['nf_minus_adamw']:+.3f} | {c} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=DIR")
    ap.add_argument("--out", required=True)
    ap.add_argument("--optimizer", help="the learned optimizer's weights folder (its meta-training summary is recorded)")
    a = ap.parse_args()
    out = Path(a.out)
    (out / "tune").mkdir(parents=True, exist_ok=True)
    summs, chosen, tunes = {}, {}, {}
    for spec in a.runs:
        name, _, d = spec.partition("=")
        summ, tune = load(Path(d))
        summs[name] = summ
        if tune:
            chosen[name] = tune.get("chosen_flags") or "(base)"
            tunes[name] = {k: tune[k] for k in ("grid", "tuning_seeds", "rule", "chosen_values", "chosen_flags")}
            shutil.copyfile(Path(d) / "tune.json", out / "tune" / f"{name}.json")
    aggs = {k: s["aggregate"] for k, s in summs.items()}
    result = {"rows": {p: table_rows(aggs, p) for p in ("honest", "paper")}, "tuning": tunes}
    h = {r["row"]: r for r in result["rows"]["honest"]}
    if "learned" in h:
        result["goal"] = {
            "rule": f"honest: TL(learned) >= TL(adamw) and NF(learned) >= NF(adamw) + {GOAL_NF_GAIN}",
            "tl_ok": h["learned"]["tl_acc"] >= h["adamw"]["tl_acc"],
            "nf_ok": h["learned"]["nf_minus_adamw"] >= GOAL_NF_GAIN,
        }
        result["goal"]["met"] = result["goal"]["tl_ok"] and result["goal"]["nf_ok"]
    if a.optimizer:
        s = json.loads((Path(a.optimizer) / "summary.json").read_text())
        result["optimizer"] = {"path": a.optimizer, "command": s.get("command"), "net": s.get("net"),
                               "config": s.get("config"), "eval_heldout": s.get("eval_heldout")}
    write_json_atomic(out / "summary.json", result)
    md = "\n".join(markdown(result["rows"][p], p, chosen) for p in ("honest", "paper"))
    if "goal" in result:
        g = result["goal"]
        md += f"\nGoal ({g['rule']}): TL {'met' if g['tl_ok'] else 'missed'}, NF {'met' if g['nf_ok'] else 'missed'}.\n"
    (out / "table.md").write_text(md)
    plot_runs([(k, s) for k, s in summs.items()], out / "plot.png")
    print(md)


if __name__ == "__main__":
    main()
