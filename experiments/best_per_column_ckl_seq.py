"""Best method per column, its margin, and which rivals are within one std (issue 8 evidence).

Why: the tables give mean ± std over 3 seeds; with 3 seeds a "best" whose lead is smaller than
the spread of the seeds is a tie, so the write-up names the best, the runner-up, the margin, and
every method whose mean is within max(std_best, std_other) of the best.

    python experiments/best_per_column_ckl_seq.py ckl RUN_DIR [RUN_DIR ...]       # `ckl run` folders
    python experiments/best_per_column_ckl_seq.py seq SUMMARY_JSON                 # `ckl sequence` summary
    python experiments/best_per_column_ckl_seq.py rows RUN_DIR [RUN_DIR ...]      # compact ckl table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def ckl_columns(dirs: list[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """{column: {run name: (mean, std)}} for paper/honest TL, NF and Total of `ckl run` folders."""
    cols: dict[str, dict[str, tuple[float, float]]] = {}
    for d in dirs:
        s = json.loads((Path(d) / "summary.json").read_text())
        for proto in ("paper", "honest"):
            for key, label in (("tl_acc", "TL"), ("nf_acc", "NF"), ("total", "Total")):
                a = s["aggregate"][proto][key]
                cols.setdefault(f"{proto} {label}", {})[Path(d).name] = (a["mean"], a["std"])
    return cols


def seq_columns(path: str) -> dict[str, dict[str, tuple[float, float]]]:
    s = json.loads(Path(path).read_text())["strategies"]
    return {c: {n: (v[c]["mean"], v[c]["std"]) for n, v in s.items()} for c in ("ACC", "BWT", "FWT", "NF")}


def report(cols: dict[str, dict[str, tuple[float, float]]]) -> str:
    lines = []
    for col, vals in cols.items():
        ranked = sorted(vals, key=lambda n: -vals[n][0])
        best, second = ranked[0], ranked[1]
        (m1, s1), (m2, s2) = vals[best], vals[second]
        ties = [n for n in ranked[1:] if m1 - vals[n][0] <= max(s1, vals[n][1])]
        verdict = "outside one std" if m1 - m2 > max(s1, s2) else "within one std (a tie)"
        lines.append(f"{col}: {best} {m1:.3f} ± {s1:.3f}, +{m1 - m2:.3f} over {second} {m2:.3f} ± {s2:.3f}: {verdict}"
                     + (f"; within one std of the best: {', '.join(ties)}" if ties else ""))
    return "\n".join(lines)


def ckl_rows(dirs: list[str]) -> str:
    """One markdown row per run: paper and honest TL / epoch / NF / Total, mean ± std."""
    lines = ["| strategy | paper: TL Top Acc | epoch | NF | Total | honest: TL | epoch | NF | Total |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in dirs:
        a = json.loads((Path(d) / "summary.json").read_text())["aggregate"]
        cells = []
        for proto in ("paper", "honest"):
            p = a[proto]
            cells += [f"{p['tl_acc']['mean']:.3f} ± {p['tl_acc']['std']:.3f}", f"{p['epoch']['mean']:.1f}",
                      f"{p['nf_acc']['mean']:.3f} ± {p['nf_acc']['std']:.3f}", f"{p['total']['mean']:.3f} ± {p['total']['std']:.3f}"]
        lines.append(f"| {Path(d).name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("ckl", "seq", "rows"):
        sys.exit(__doc__)
    if sys.argv[1] == "rows":
        sys.exit(print(ckl_rows(sys.argv[2:])))
    print(report(ckl_columns(sys.argv[2:]) if sys.argv[1] == "ckl" else seq_columns(sys.argv[2])))
