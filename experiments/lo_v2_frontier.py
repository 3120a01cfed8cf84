"""TL/NF frontiers of the learned-optimizer table's tuning grids, and NF at equal TL.

    python experiments/lo_v2_frontier.py --out docs/results/lo_v2_table/frontier \
        adamw=runs/lo_v2/adamw learned=runs/lo_v2/learned random=runs/lo_v2/random adamw_replay=runs/lo_v2/replay

Each NAME=DIR is a `metacl ckl tune` folder. Every grid point of it (tuning seed 0, its honest epoch)
gives one (TL, NF) point; a row's frontier is its points sorted by TL. Why: issue 15 asks for NF "at
equal TL" against AdamW and its best retention baseline, and the rows of the table sit at different
TL (each chose its own step size on tl_val), so NF differences there mix plasticity with retention.
NF at the TL of another row's point is read by linear interpolation between a frontier's two
neighbouring points (None outside its range: no extrapolation). The TL test accuracies were recorded
by `tune` for reading only; nothing here chooses anything. Writes frontier.json and frontier.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from metacl.utils import write_json_atomic


def points(tune_dir: Path) -> list[dict]:
    t = json.loads((tune_dir / "tune.json").read_text())
    return sorted(({"point": c["name"], "tl": c["tl_test_acc_at_honest_not_used"], "nf": c["nf_acc_at_honest"],
                    "tl_val": c["tl_val_acc"]} for c in t["configs"]), key=lambda p: p["tl"])


def nf_at(frontier: list[dict], tl: float) -> float | None:
    """NF of `frontier` at TL `tl` by linear interpolation; None outside its TL range."""
    for a, b in zip(frontier, frontier[1:]):
        if a["tl"] <= tl <= b["tl"]:
            if b["tl"] == a["tl"]:
                return max(a["nf"], b["nf"])
            w = (tl - a["tl"]) / (b["tl"] - a["tl"])
            return a["nf"] + w * (b["nf"] - a["nf"])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=DIR")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    fronts = {}
    for spec in a.runs:
        name, _, d = spec.partition("=")
        fronts[name] = points(Path(d))
    equal = {}
    for name, pts in fronts.items():
        equal[name] = [{"point": p["point"], "tl": p["tl"], "nf": p["nf"],
                        "nf_of_others_at_this_tl": {o: nf_at(f, p["tl"]) for o, f in fronts.items() if o != name}}
                       for p in pts]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "frontier.json", {"seed": 0, "protocol": "honest (epoch chosen on tl_val)",
                                              "frontiers": fronts, "equal_tl": equal})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, pts in fronts.items():
        ax.plot([p["tl"] for p in pts], [p["nf"] for p in pts], marker="o", label=name)
        for p in pts:
            ax.annotate(p["point"].split("=")[-1], (p["tl"], p["nf"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("TL accuracy (honest epoch, seed 0)")
    ax.set_ylabel("NF accuracy")
    ax.set_title("Grid points of each row: up and right is better")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    for name, rows in equal.items():
        for r in rows:
            others = ", ".join(f"{o} {v:.3f}" if v is not None else f"{o} n/a" for o, v in r["nf_of_others_at_this_tl"].items())
            print(f"{name} {r['point']}: TL {r['tl']:.3f} NF {r['nf']:.3f} | NF of the others at this TL: {others}")


if __name__ == "__main__":
    main()
