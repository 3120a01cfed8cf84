"""TL/NF frontiers of the learned-optimizer table's tuning grids, and NF at equal TL.

    python experiments/lo_v2_frontier.py --out docs/results/lo_v2_table/frontier \
        adamw=runs/lo_v2/adamw learned=runs/lo_v2/learned random=runs/lo_v2/random adamw_replay=runs/lo_v2/replay

Each NAME=DIR is a `metacl ckl tune` folder or its tune.json (e.g. a committed docs/results/lo_v2_table/tune/adamw.json). Every grid point of it (tuning seed 0, its honest epoch)
gives one (TL, NF) point. Why: issue 15 asks for NF "at equal TL" against AdamW and its best retention
baseline, and the rows of the table sit at different TL (each chose its own step size on tl_val), so
NF differences there mix plasticity with retention. A step-size grid is not monotone in TL (too large
a step learns less and forgets more), so no curve through the points is interpolated; instead

    best_nf(row, x) = the highest NF among the row's points with TL >= x   (None if it has none)

is read at x = the TL of each row's tuned point: "at no less TL than that, the most a grid point of
this row kept". Only Pareto points matter for it (frontier.json lists them). The TL test accuracies
were recorded by `tune` for reading only; nothing here chooses anything. Writes frontier.json and
frontier.png (every point, Pareto points joined).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from metacl.utils import write_json_atomic


def read_tune(path: Path) -> dict:
    """tune.json of a tune folder, or the file itself (as committed under docs/results/*/tune/)."""
    return json.loads((path if path.is_file() else path / "tune.json").read_text())


def points(t: dict) -> list[dict]:
    """Grid points of a tune.json."""
    return sorted(({"point": c["name"], "tl": c["tl_test_acc_at_honest_not_used"], "nf": c["nf_acc_at_honest"],
                    "tl_val": c["tl_val_acc"]} for c in t["configs"]), key=lambda p: p["tl"])


def best_nf(pts: list[dict], tl: float) -> float | None:
    """The highest NF among `pts` with TL >= `tl` (None if none reaches it)."""
    ok = [p["nf"] for p in pts if p["tl"] >= tl - 1e-12]
    return max(ok) if ok else None


def pareto(pts: list[dict]) -> list[dict]:
    """Points no other point beats on both TL and NF, by TL."""
    return [p for p in pts if not any(q["tl"] >= p["tl"] and q["nf"] >= p["nf"] and q is not p
                                      and (q["tl"], q["nf"]) != (p["tl"], p["nf"]) for q in pts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=DIR")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    fronts, chosen = {}, {}
    for spec in a.runs:
        name, _, d = spec.partition("=")
        t = read_tune(Path(d))
        fronts[name] = points(t)
        chosen[name] = t["configs"][t["chosen"]]["name"]
    levels = {name: next(p["tl"] for p in fronts[name] if p["point"] == chosen[name]) for name in fronts}
    table = {f"TL >= {levels[ref]:.3f} ({ref}'s tuned point)": {name: best_nf(pts, levels[ref]) for name, pts in fronts.items()}
             for ref in fronts}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "frontier.json", {"seed": 0, "protocol": "honest (epoch chosen on tl_val)",
                                              "points": fronts, "pareto": {k: pareto(v) for k, v in fronts.items()},
                                              "chosen": chosen, "best_nf_at_tl": table})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for name, pts in fronts.items():
        line, = ax.plot([p["tl"] for p in pts], [p["nf"] for p in pts], "o", alpha=0.6)
        par = pareto(pts)
        ax.plot([p["tl"] for p in par], [p["nf"] for p in par], "-", color=line.get_color(), label=name)
        for p in pts:
            ax.annotate(p["point"].split("=")[-1], (p["tl"], p["nf"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("TL accuracy (honest epoch, seed 0)")
    ax.set_ylabel("NF accuracy")
    ax.set_title("Every grid point; lines join each row's Pareto points (up-right is better)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    print("| best NF of a grid point with TL at least ... | " + " | ".join(fronts) + " |")
    print("|---|" + "---:|" * len(fronts))
    for level, row in table.items():
        print(f"| {level} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in row.values()) + " |")


if __name__ == "__main__":
    main()
