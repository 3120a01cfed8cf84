"""Choose issue 19's retention variant from validation runs only (experiments/taalm_retention_v2.sh tune).

Every run in TUNE_DIR was trained on the world's TL documents with the world's meta_nf facts as
its NF set, so its `nf_acc` is a validation NF, and its honest epoch was chosen on tl_val; or (--metric
tl_acc) every run was on a separate validation world (another seed, its own base LM), whose TL and NF
are validation data too. Rule
(fixed before the runs): keep candidates whose mean honest tl_val is >= KEEP x plain taalm's;
choose the largest mean NF-validation gain over plain taalm (ties: the earlier name). Test TL and
NF are never read.

Rule `cheapest` (added 2026-12-03, after the `max_nf` choice on the validation world, mix_1.0,
cost 9.9% TL on the test world where validation said 4.3%): the goal is a *threshold* on NF (+0.05)
and a *limit* on TL cost (5%), and of the two only NF carried over from validation to test (mix_1.0:
+0.175 on validation, +0.163 on test; TL ratio 0.957 vs 0.901). `max_nf` picks the strongest
retention allowed, so it sits on the TL edge where validation noise decides. `cheapest` keeps the
candidates whose NF-validation gain is >= MIN_GAIN (default 0.10, twice the bar) and picks the one
with the highest TL ratio. It was set after one test result had been seen; taalm_v2.md says so.

    python experiments/taalm_retention_choose.py runs/ret_tune --json runs/ret_tune/choice.json
    python experiments/taalm_retention_choose.py --from-json docs/results/taalm_v2_table_lm2/retention_choice_valworld.json \
        --rule cheapest --json docs/results/taalm_v2_table_lm2/retention_choice_valworld_cheapest.json
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
    ap.add_argument("tune_dir", nargs="?", help="folder of validation runs (or give --from-json)")
    ap.add_argument("--from-json", help="re-apply a rule to the candidates of an earlier choice JSON")
    ap.add_argument("--rule", default="max_nf", choices=["max_nf", "cheapest"],
                    help="max_nf: largest NF gain among TL ratio >= KEEP; cheapest: highest TL ratio among NF gain >= MIN_GAIN")
    ap.add_argument("--min-gain", type=float, default=0.10, help="cheapest: NF-validation gain needed (default 0.10)")
    ap.add_argument("--base", default="taalm", help="the plain taalm run's folder name")
    ap.add_argument("--keep", type=float, default=0.95, help="tl_val must stay >= KEEP x the base's (default 0.95)")
    ap.add_argument("--metric", default="val_acc", choices=["val_acc", "tl_acc"],
                    help="the TL validation score: val_acc (tl_val of the test world) or tl_acc (only for runs on a "
                         "separate validation world, whose TL is not the test's)")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    if (a.tune_dir is None) == (a.from_json is None):
        ap.error("give a TUNE_DIR or --from-json, not both")
    if a.from_json:
        prev = json.loads(Path(a.from_json).read_text())
        base, metric = prev["base"], prev.get("metric", a.metric)
        rows = {n: {k: r[k] for k in ("val_acc", "nf_val_acc", "epoch", "seeds")} for n, r in prev["candidates"].items()}
    else:
        d, metric = Path(a.tune_dir), a.metric
        base = honest(d / a.base, metric)
        rows = {run.name: honest(run, metric) for run in
                sorted(p for p in d.iterdir() if p.is_dir() and p.name != a.base and (p / "summary.json").is_file())}
    for r in rows.values():
        r["nf_val_gain"] = r["nf_val_acc"] - base["nf_val_acc"]
        r["val_ratio"] = r["val_acc"] / base["val_acc"]
        r["eligible"] = r["val_ratio"] >= a.keep if a.rule == "max_nf" else r["nf_val_gain"] >= a.min_gain
    order = sorted(rows)
    eligible = [n for n, r in rows.items() if r["eligible"]]
    score = "nf_val_gain" if a.rule == "max_nf" else "val_ratio"
    chosen = max(eligible, key=lambda n: (rows[n][score], -order.index(n))) if eligible else None
    rule = (f"max NF-validation gain over {a.base} among candidates with honest {metric} >= {a.keep} x {a.base}'s"
            if a.rule == "max_nf" else
            f"highest honest {metric} ratio to {a.base}'s among candidates with NF-validation gain >= {a.min_gain}")
    out = {"rule": rule, "metric": metric, "base": base, "candidates": rows, "chosen": chosen}
    if a.from_json:
        out["from"] = a.from_json
    write_json_atomic(Path(a.json), out)
    for n, r in rows.items():
        print(f"{n:12s} tl_val {r['val_acc']:.3f} ({r['val_ratio']:.2f}x) NF-val {r['nf_val_acc']:.3f} "
              f"({r['nf_val_gain']:+.3f}) {'eligible' if r['eligible'] else ''}")
    print(f"base tl_val {base['val_acc']:.3f} NF-val {base['nf_val_acc']:.3f}; chosen: {chosen}")


if __name__ == "__main__":
    main()
