"""Turn per-epoch probe scores into the LAMA-ckl table and a plot, for one run or several.

Two ways of picking "the" epoch of a run, reported side by side:

- `paper`: the epoch with the best TL accuracy, read off the TL *test* curve (what the TAALM
  paper reports as Top Acc). This looks at the test set to choose, so it is optimistic.
- `honest`: the epoch with the best accuracy on `tl_val`, a held-out TL-like split that is
  trained on like TL but never used for the reported TL score. No test data is used to choose.

For each, the row gives TL accuracy at that epoch, the epoch, NF accuracy at that epoch, Total
Knowledge = TL + NF, and the exact-match scores at the same epoch; mean ± sample std over seeds.
The `epoch 0` row is the model before any training (the starting point of every curve).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from metacl.errors import MetaclError

PROTOCOLS = ("paper", "honest")


def _mean_std(xs: Sequence[float]) -> dict[str, Any]:
    xs = [float(x) for x in xs if x is not None]
    if not xs:
        return {"mean": None, "std": None, "values": []}
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "values": xs}


def _by_seed(rows: Sequence[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(int(r["seed"]), []).append(r)
    return {s: sorted(v, key=lambda r: r["epoch"]) for s, v in sorted(out.items())}


def _pick(rows: list[dict], key: str) -> dict:
    """The row maximising `key` among trained epochs (epoch >= 1 when any exist); ties → earliest."""
    cand = [r for r in rows if r["epoch"] >= 1] or rows
    cand = [r for r in cand if r.get(key) is not None] or cand
    return max(cand, key=lambda r: (r.get(key) if r.get(key) is not None else -1.0, -r["epoch"]))


def _point(r: dict) -> dict[str, Any]:
    return {
        "epoch": r["epoch"], "tl_acc": r["tl_acc"], "nf_acc": r["nf_acc"], "total": r["tl_acc"] + r["nf_acc"],
        "tl_em": r.get("tl_em"), "nf_em": r.get("nf_em"), "val_acc": r.get("val_acc"),
    }


def summarize(rows: Sequence[dict]) -> dict[str, Any]:
    """Per-seed picks under both protocols, their mean ± std, and the mean curves."""
    if not rows:
        raise MetaclError("no metrics rows to summarise; the run produced no evaluations")
    seeds = _by_seed(rows)
    per_seed = {}
    for s, rs in seeds.items():
        per_seed[s] = {
            "start": _point(next((r for r in rs if r["epoch"] == 0), rs[0])),
            "paper": _point(_pick(rs, "tl_acc")),
            "honest": _point(_pick(rs, "val_acc")),
        }
    agg = {}
    for proto in ("start",) + PROTOCOLS:
        agg[proto] = {k: _mean_std([per_seed[s][proto][k] for s in per_seed])
                      for k in ("epoch", "tl_acc", "nf_acc", "total", "tl_em", "nf_em", "val_acc")}
    epochs = sorted({r["epoch"] for r in rows})
    curves = {}
    for key in ("tl_acc", "nf_acc", "val_acc", "tl_em", "nf_em", "train_loss"):
        curves[key] = [_mean_std([r.get(key) for r in rows if r["epoch"] == e]) for e in epochs]
        curves[key] = [{"mean": c["mean"], "std": c["std"]} for c in curves[key]]
    return {"seeds": list(per_seed), "per_seed": {str(k): v for k, v in per_seed.items()},
            "aggregate": agg, "epochs": epochs, "curves": curves}


def closure(tl: float, tl_ref: float, tl_oracle: float) -> float | None:
    """The share of the oracle's TL gain over a reference row that a row's TL reaches,
    (tl - tl_ref) / (tl_oracle - tl_ref): the column every meta-learner table has. None when the
    oracle does not beat the reference (no headroom, so nothing to close)."""
    head = tl_oracle - tl_ref
    return (tl - tl_ref) / head if head > 0 else None


def _fmt(ms: dict, digits: int = 3) -> str:
    if ms["mean"] is None:
        return "n/a"
    if len(ms["values"]) <= 1:
        return f"{ms['mean']:.{digits}f}"
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"


def table_markdown(runs: Sequence[tuple[str, dict]]) -> str:
    """One markdown table: three rows per run, the honest protocol first, then paper, then epoch 0.

    Why this order and the gain column: the honest pick (epoch chosen on tl_val) is the number to
    quote; a TL accuracy means little without where it started (partial credit gives ~0.2 before
    any training), so every TL cell has its gain over epoch 0 beside it (mean ± std of per-seed gains).
    """
    head = ("| run | protocol | TL acc (Top Acc) | TL gain over epoch 0 | epoch | NF acc | Total Knowledge | TL EM | NF EM | seeds |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name, summ in runs:
        agg = summ["aggregate"]
        n = len(summ["seeds"])
        per_seed = summ.get("per_seed") or {}
        for proto in PROTOCOLS[::-1] + ("start",):
            a = agg[proto]
            label = {"start": "epoch 0 (before)", "paper": "paper (best TL test epoch)",
                     "honest": "honest (epoch by tl_val)"}[proto]
            ep = a["epoch"]
            ep_s = "n/a" if ep["mean"] is None else (f"{ep['mean']:.1f}" if n > 1 else f"{ep['mean']:.0f}")
            gains = [v[proto]["tl_acc"] - v["start"]["tl_acc"] for v in per_seed.values()
                     if v.get(proto, {}).get("tl_acc") is not None and v.get("start", {}).get("tl_acc") is not None]
            gain = _mean_std(gains)
            gain_s = "n/a" if gain["mean"] is None else (f"{gain['mean']:+.3f}" if len(gains) <= 1
                                                         else f"{gain['mean']:+.3f} ± {gain['std']:.3f}")
            lines.append(f"| {name} | {label} | {_fmt(a['tl_acc'])} | {gain_s} | {ep_s} | {_fmt(a['nf_acc'])} | "
                         f"{_fmt(a['total'])} | {_fmt(a['tl_em'])} | {_fmt(a['nf_em'])} | {n} |")
    return "\n".join(lines) + "\n"


# Panels of a run's plot: (curve key, title, y label, bounded in [0, 1]). "total" is TL + NF.
PLOT_PANELS = (
    ("tl_acc", "To-Learn (TL) accuracy", "teacher-forced accuracy", True),
    ("nf_acc", "Not-To-Forget (NF) accuracy", "teacher-forced accuracy", True),
    ("total", "Total Knowledge (TL + NF)", "TL acc + NF acc", False),
    ("val_acc", "TL_val accuracy (chooses the honest epoch)", "teacher-forced accuracy", True),
    ("train_loss", "training loss (mean over the epoch)", "token-weighted NLL", False),
)
# How the epochs each protocol chose are marked on every panel.
PROTOCOL_MARKERS = {"paper": ("*", 13, "paper: best TL test epoch"), "honest": ("D", 7, "honest: epoch by tl_val")}


def _curve(summ: dict, key: str) -> tuple[list, list]:
    """(mean, std) per epoch of `key`; Total Knowledge is the sum of the TL and NF means (no band)."""
    curves = summ["curves"]
    if key == "total":
        tl, nf = curves["tl_acc"], curves["nf_acc"]
        mean = [a["mean"] + b["mean"] if a["mean"] is not None and b["mean"] is not None else None
                for a, b in zip(tl, nf)]
        return mean, [None] * len(mean)
    cs = curves.get(key) or [{"mean": None, "std": None}] * len(summ["epochs"])
    return [c["mean"] for c in cs], [c["std"] for c in cs]


def chosen_epochs(summ: dict, proto: str) -> list[int]:
    """The distinct epochs `proto` ("paper" or "honest") chose over the run's seeds."""
    return sorted({int(v[proto]["epoch"]) for v in summ.get("per_seed", {}).values()})


def plot_runs(runs: Sequence[tuple[str, dict]], path: str | Path, full_axis: bool = False) -> Path:
    """Five panels against epoch (TL, NF, Total Knowledge, TL_val, training loss): mean over seeds,
    band = ± one std, the epochs the paper and honest protocols chose marked on every curve.

    Why the marks: the table reports one epoch per protocol, and the plot should show where it
    sits on each curve (NF at the epoch TL peaked, say). Epoch ticks are integers. `full_axis`
    fixes accuracy panels to [0, 1], so that a 0.005 move does not fill the panel and look like
    a collapse; by default the axes zoom to the data.
    """
    fig = plot_figure(runs, full_axis)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_figure(runs: Sequence[tuple[str, dict]], full_axis: bool = False):
    """The matplotlib figure `plot_runs` saves (tests inspect its axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 3, figsize=(15, 7.6))
    flat = list(axes.flat)
    colors = {}
    for ax, (key, title, ylabel, bounded) in zip(flat, PLOT_PANELS):
        drawn = False
        for name, summ in runs:
            ep = summ["epochs"]
            mean, sd = _curve(summ, key)
            pts = [(e, m, s) for e, m, s in zip(ep, mean, sd) if m is not None]
            if not pts:
                continue
            xs, ms, ss = [p[0] for p in pts], [p[1] for p in pts], [p[2] or 0.0 for p in pts]
            (line,) = ax.plot(xs, ms, marker="o", ms=3, label=name, color=colors.get(name))
            colors[name] = line.get_color()
            drawn = True
            if any(p[2] for p in pts):
                ax.fill_between(xs, [m - s for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)],
                                color=line.get_color(), alpha=0.2)
            at = dict(zip(xs, ms))
            for proto, (mk, size, _) in PROTOCOL_MARKERS.items():
                for e in chosen_epochs(summ, proto):
                    if e in at:
                        ax.plot([e], [at[e]], linestyle="none", marker=mk, ms=size, color=line.get_color(),
                                markeredgecolor="black", markeredgewidth=0.6, zorder=5 if proto == "paper" else 6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if full_axis and bounded:
            ax.set_ylim(0, 1)
        elif full_axis and key == "total":
            ax.set_ylim(0, 2)
        if not drawn:
            ax.text(0.5, 0.5, "no values (no training epochs)", ha="center", va="center", transform=ax.transAxes)
    legend_ax = flat[len(PLOT_PANELS)]
    legend_ax.axis("off")
    handles = [Line2D([], [], color=c, marker="o", ms=4, label=n) for n, c in colors.items()]
    handles += [Line2D([], [], linestyle="none", marker=mk, ms=size * 0.8, color="gray", markeredgecolor="black",
                       label=label) for mk, size, label in PROTOCOL_MARKERS.values()]
    legend_ax.legend(handles=handles, loc="center", fontsize=9, frameon=False,
                     title="runs; marks: the epoch each protocol chose\n(one mark per seed's choice)" + ("" if full_axis else
                                                                           "\n(axes zoom to the data)"))
    fig.tight_layout()
    return fig


def read_rows(path: str | Path) -> list[dict]:
    rows = []
    p = Path(path)
    if not p.is_file():
        return rows
    with open(p) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    # A run killed mid-write leaves at most one partial last line; skip it.
                    continue
    return rows


def run_name(strategies: Sequence[str], optimizer: str | None = "adamw") -> str:
    """A run's name in tables and plots: its strategies joined by '+', and the optimizer when it
    is not the default AdamW ('taalm [learned]'), so that `--optimizer learned` runs do not look
    like AdamW runs in `ckl compare`."""
    name = "+".join(strategies)
    return name if optimizer in (None, "", "adamw") else f"{name} [{optimizer}]"


def load_run(out_dir: str | Path) -> tuple[str, dict]:
    """(name, summary) of a finished `ckl run` folder, recomputed from its metrics.jsonl."""
    d = Path(out_dir)
    summ_path = d / "summary.json"
    if not summ_path.is_file():
        raise MetaclError(f"{d} holds no summary.json; pass the --out folder of a finished `metacl ckl run`")
    with open(summ_path) as f:
        stored = json.load(f)
    seeds = set(stored.get("seeds") or [])
    rows = [r for r in read_rows(d / "metrics.jsonl") if not seeds or r["seed"] in seeds]
    summ = summarize(rows) if rows else stored
    name = stored.get("name") or d.name
    if stored.get("strategies") and stored.get("optimizer") and name == "+".join(stored["strategies"]):
        name = run_name(stored["strategies"], stored["optimizer"])  # summaries written before names had it
    return name, summ


def compare(out_dirs: Sequence[str | Path], out: str | Path | None = None, full_axis: bool = False) -> str:
    """Merged markdown table (returned) and, if `out` is given, table.md + plot.png there."""
    if not out_dirs:
        raise MetaclError("no runs to compare; pass one or more --out folders of `metacl ckl run`")
    runs = [load_run(d) for d in out_dirs]
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):  # two runs with the same strategy: disambiguate by folder
        runs = [(f"{n} ({Path(d).name})", s) for (n, s), d in zip(runs, out_dirs)]
    table = table_markdown(runs)
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        (o / "table.md").write_text(table)
        plot_runs(runs, o / "plot.png", full_axis=full_axis)
    return table
