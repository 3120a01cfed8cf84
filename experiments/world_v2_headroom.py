"""Headroom of a world-v2 table: each row's TL gain over epoch 0 against fine-tuning's, Total
Knowledge, and how often overwritten facts still get the old object, under both protocols.

    python experiments/world_v2_headroom.py RUN_DIR... --baseline finetune --json docs/results/world_v2_summary.json

Each RUN_DIR is the --out folder of a finished `metacl ckl run` (summary.json + metrics.jsonl).
Per seed, the honest epoch is the one with the best tl_val accuracy (as in metacl.ckl.report);
the gain is TL at that epoch minus TL at epoch 0 of the same seed. The ratio is mean gain of the
row over mean gain of the baseline row. `tl_old_object_acc` (teacher-forced accuracy of the old
object on overwritten facts' probes) is read at the same epoch from metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metacl.ckl.report import read_rows  # noqa: E402
from metacl.utils import write_json_atomic  # noqa: E402


def _ms(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"mean": None, "std": None, "values": []}
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "values": xs}


def row_stats(run: Path) -> dict:
    summ = json.loads((run / "summary.json").read_text())
    rows = read_rows(run / "metrics.jsonl")
    by = {(r["seed"], r["epoch"]): r for r in rows}
    out = {"name": summ["name"], "run": str(run), "seeds": summ["seeds"], "lr": summ.get("lr"),
           "epochs": summ.get("epochs"), "n_tl": summ.get("n_tl"), "n_nf": summ.get("n_nf")}
    for proto in ("honest", "paper"):
        per = {k: [] for k in ("tl", "gain", "nf", "nf_drop", "total", "total_gain", "old_object", "overwrite", "epoch")}
        for s in summ["seeds"]:
            ps = summ["per_seed"][str(s)]
            start, pick = ps["start"], ps[proto]
            r = by.get((int(s), int(pick["epoch"])), {})
            r0 = by.get((int(s), 0), {})
            per["tl"].append(pick["tl_acc"])
            per["gain"].append(pick["tl_acc"] - start["tl_acc"])
            per["nf"].append(pick["nf_acc"])
            per["nf_drop"].append(start["nf_acc"] - pick["nf_acc"])
            per["total"].append(pick["total"])
            per["total_gain"].append(pick["total"] - start["total"])
            per["old_object"].append(r.get("tl_old_object_acc"))
            per["overwrite"].append(r.get("tl_overwrite_acc"))
            per["epoch"].append(pick["epoch"])
        out[proto] = {k: _ms(v) for k, v in per.items()}
    out["start"] = {k: _ms([by.get((int(s), 0), {}).get(f) for s in summ["seeds"]])
                    for k, f in (("tl", "tl_acc"), ("nf", "nf_acc"), ("old_object", "tl_old_object_acc"),
                                 ("overwrite", "tl_overwrite_acc"))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--baseline", default="finetune", help="row name the gains are divided by")
    ap.add_argument("--json", default=None)
    ap.add_argument("--extra", default=None, help="JSON object merged into the output (world knobs, base LM)")
    args = ap.parse_args(argv)
    stats = [row_stats(Path(r)) for r in args.runs]
    base = next((s for s in stats if s["name"] == args.baseline), None)
    lines = ["| run | honest TL | gain | gain / finetune's | NF | Total Knowledge | overwritten facts: new object | old object still answered | paper TL | paper gain |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def f(ms, sign=False):
        if ms["mean"] is None:
            return "n/a"
        m = f"{ms['mean']:+.3f}" if sign else f"{ms['mean']:.3f}"
        return m if len(ms["values"]) <= 1 else f"{m} ± {ms['std']:.3f}"

    for s in stats:
        for proto in ("honest", "paper"):
            g = s[proto]["gain"]["mean"]
            bg = base[proto]["gain"]["mean"] if base else None
            s[proto]["gain_ratio_vs_baseline"] = (g / bg) if (base and bg and bg > 0) else None
        r = s["honest"]["gain_ratio_vs_baseline"]
        lines.append(f"| {s['name']} | {f(s['honest']['tl'])} | {f(s['honest']['gain'], True)} | "
                     f"{'n/a' if r is None else f'{r:.2f}x'} | {f(s['honest']['nf'])} | {f(s['honest']['total'])} | "
                     f"{f(s['honest']['overwrite'])} | {f(s['honest']['old_object'])} | {f(s['paper']['tl'])} | {f(s['paper']['gain'], True)} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.json:
        out = {"baseline": args.baseline, "rows": stats, "table_md": table}
        if args.extra:
            out.update(json.loads(args.extra))
        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
