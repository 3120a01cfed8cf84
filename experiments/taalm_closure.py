"""Closure of the token-weighting rows: how much of the oracle's gain over fine-tuning each row gets.

    closure(row) = (TL(row) - TL(finetune)) / (TL(oracle) - TL(finetune))

TL = teacher-forced To-Learn accuracy of the chosen protocol (default `honest`: the epoch picked on
tl_val), NF delta = NF(row) - NF(finetune) at that epoch. Reads a table summary.json written by
experiments/taalm_table.py (rows finetune, oracle, and any others); with --runs it reads
`NAME=RUN_DIR` pairs of `metacl ckl run` folders instead (their summary.json).

    python experiments/taalm_closure.py docs/results/taalm_table/summary.json --json docs/results/taalm_table/closure.json
    python experiments/taalm_closure.py --runs finetune=runs/v2/ckl_finetune oracle=runs/v2/ckl_oracle taalm=runs/v2/ckl_A1
"""
import argparse
import json
from pathlib import Path

from metacl.ckl.report import closure


def closure_rows(aggregates: dict, protocol: str = "honest") -> list[dict]:
    """One row per entry of {name: aggregate}; needs 'finetune' and 'oracle' among them."""
    for need in ("finetune", "oracle"):
        if need not in aggregates:
            raise SystemExit(f"no '{need}' row among {sorted(aggregates)}; closure needs both references")
    tl = {k: a[protocol]["tl_acc"]["mean"] for k, a in aggregates.items()}
    nf = {k: a[protocol]["nf_acc"]["mean"] for k, a in aggregates.items()}
    rows = []
    for k in aggregates:
        rows.append({"row": k, "tl_acc": tl[k], "nf_acc": nf[k], "nf_minus_finetune": nf[k] - nf["finetune"],
                     "closure": closure(tl[k], tl["finetune"], tl["oracle"]),
                     "seeds": len(aggregates[k][protocol]["tl_acc"].get("values", []))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", nargs="?", help="summary.json of experiments/taalm_table.py")
    ap.add_argument("--runs", nargs="+", default=None, metavar="NAME=DIR", help="ckl run folders instead of a table")
    ap.add_argument("--protocol", default="honest", choices=["honest", "paper"])
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    if a.runs:
        aggs = {}
        for r in a.runs:
            name, _, d = r.partition("=")
            aggs[name] = json.loads((Path(d) / "summary.json").read_text())["aggregate"]
    else:
        aggs = {k: v["aggregate"] for k, v in json.loads(Path(a.table).read_text()).items()}
    rows = closure_rows(aggs, a.protocol)
    print(f"| row | TL acc ({a.protocol}) | NF acc | NF - finetune | closure | seeds |\n|---|---|---|---|---|---|")
    for r in rows:
        c = "n/a" if r["closure"] is None else f"{r['closure']:.3f}"
        print(f"| {r['row']} | {r['tl_acc']:.3f} | {r['nf_acc']:.3f} | {r['nf_minus_finetune']:+.3f} | {c} | {r['seeds']} |")
    if a.json:
        from metacl.utils import write_json_atomic

        write_json_atomic(a.json, {"protocol": a.protocol, "source": a.table or a.runs, "rows": rows})


if __name__ == "__main__":
    main()
