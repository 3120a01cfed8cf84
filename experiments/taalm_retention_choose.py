"""Choose issue 19's retention variant from validation runs only (experiments/taalm_retention_v2.sh tune).

Every run in TUNE_DIR was trained on the world's TL documents with the world's meta_nf facts as
its NF set, so its `nf_acc` is a validation NF, and its honest epoch was chosen on tl_val; or (--metric
tl_acc) every run was on a separate validation world (another seed, its own base LM), whose TL and NF
are validation data too. Rule
(fixed before the runs): keep candidates whose mean honest tl_val is >= KEEP x plain taalm's;
choose the largest mean NF-validation gain over plain taalm (ties: the earlier name). Test TL and
NF are never read.

    python experiments/taalm_retention_choose.py runs/ret_tune --json runs/ret_tune/choice.json
"""
import argparse
import json
from pathlib import Path

from metacl.utils import write_json_atomic


def honest(run: Path, metric: str) -> dict:
    agg = json.loads((run / "summary.json").read_text())["aggregate"]["honest"]
    return {"val_acc": agg[metric]["mean"], "nf_val_acc": agg["nf_acc"]["mean"], "epoch": agg["epoch"]["mean"],
            "seeds": len(agg[metric]["values"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tune_dir")
    ap.add_argument("--base", default="taalm", help="the plain taalm run's folder name")
    ap.add_argument("--keep", type=float, default=0.95, help="tl_val must stay >= KEEP x the base's (default 0.95)")
    ap.add_argument("--metric", default="val_acc", choices=["val_acc", "tl_acc"],
                    help="the TL validation score: val_acc (tl_val of the test world) or tl_acc (only for runs on a "
                         "separate validation world, whose TL is not the test's)")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    d = Path(a.tune_dir)
    base = honest(d / a.base, a.metric)
    rows = {}
    for run in sorted(p for p in d.iterdir() if p.is_dir() and p.name != a.base and (p / "summary.json").is_file()):
        r = honest(run, a.metric)
        r["nf_val_gain"] = r["nf_val_acc"] - base["nf_val_acc"]
        r["val_ratio"] = r["val_acc"] / base["val_acc"]
        r["eligible"] = r["val_ratio"] >= a.keep
        rows[run.name] = r
    eligible = [n for n, r in rows.items() if r["eligible"]]
    chosen = max(eligible, key=lambda n: (rows[n]["nf_val_gain"], -sorted(rows).index(n))) if eligible else None
    out = {"rule": f"max NF-validation gain over {a.base} among candidates with honest {a.metric} >= {a.keep} x {a.base}'s",
           "metric": a.metric,
           "base": base, "candidates": rows, "chosen": chosen}
    write_json_atomic(Path(a.json), out)
    for n, r in rows.items():
        print(f"{n:12s} tl_val {r['val_acc']:.3f} ({r['val_ratio']:.2f}x) NF-val {r['nf_val_acc']:.3f} "
              f"({r['nf_val_gain']:+.3f}) {'eligible' if r['eligible'] else ''}")
    print(f"base tl_val {base['val_acc']:.3f} NF-val {base['nf_val_acc']:.3f}; chosen: {chosen}")


if __name__ == "__main__":
    main()
