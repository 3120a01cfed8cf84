"""`metacl ckl show OUT`: what a `ckl run` folder holds right now, finished or still running.

Why: the table and plot of a run used to appear only when the whole run finished; during a
30-epoch, 3-seed run (or after a kill) the only view was `metrics.jsonl`. This reads the rows
written so far, prints the same table `ckl run` prints at the end (over the epochs evaluated so
far), says whether the run is complete, and where its plot is. Nothing in OUT is written: a run
may still be appending to it. `plot=` draws the epochs so far into a file of the user's choice.
"""

from __future__ import annotations

import json
from pathlib import Path

from metacl.ckl.report import plot_runs, read_rows, run_name, summarize, table_markdown
from metacl.errors import MetaclError


def _epochs_by_seed(rows: list[dict]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for r in rows:
        out.setdefault(int(r["seed"]), []).append(int(r["epoch"]))
    return {s: sorted(set(v)) for s, v in sorted(out.items())}


def show_run(out_dir: str | Path, plot: str | Path | None = None, full_axis: bool = False) -> str:
    """The report text for the `ckl run` folder `out_dir` (see the module doc)."""
    from metacl.utils import run_kind

    d = Path(out_dir)
    if not d.exists():
        raise MetaclError(f"{d} does not exist; pass the --out folder of a `metacl ckl run`")
    kind = run_kind(d)
    if kind != "ckl run":
        what = f"a `metacl {kind}` run" if kind and kind != "saved model" else (kind or "no metacl run")
        raise MetaclError(f"{d} holds {what}, not a `metacl ckl run`; pass the --out folder of a ckl run"
                          + (" (for meta-training, read OUT/summary.json and OUT/metrics.jsonl)"
                             if kind and kind.startswith("meta-train") else ""))
    cfg = json.loads((d / "config.json").read_text()).get("config") or {}
    name = run_name(cfg.get("strategies") or [d.name], cfg.get("optimizer"))
    rows = read_rows(d / "metrics.jsonl")
    summary_path, plot_path = d / "summary.json", d / "plot.png"
    epochs = int(cfg.get("epochs") or 0)
    seen = _epochs_by_seed(rows)
    lines = []
    if summary_path.is_file():
        asked = json.loads(summary_path.read_text()).get("seeds") or list(seen)
        done = [s for s in asked if s in seen]
        state = f"finished: seeds {' '.join(map(str, done))}, epochs 0-{max(seen[done[0]]) if done else 0}"
        extra = sorted(set(seen) - set(asked))
        if extra:  # a later call with more seeds is adding to the folder
            state += f"; seeds {' '.join(map(str, extra))} are being added (or were stopped)"
    elif seen:
        parts = [f"seed {s} at epoch {max(es)} of {epochs}" for s, es in seen.items()]
        state = (f"running or stopped ({', '.join(parts)}); rerunning the same `metacl ckl run` command resumes it")
    else:
        state = "started, no epoch evaluated yet (or stopped before epoch 0 finished)"
    lines.append(f"ckl run {name} in {d}: {state}")
    lines.append(f"model {cfg.get('model')}, data {cfg.get('data') or cfg.get('tl')}, {epochs} epochs, "
                 f"optimizer {cfg.get('optimizer')}, lr {cfg.get('lr')}")
    if rows:
        summ = summarize(rows)
        lines.append(table_markdown([(name, summ)]).rstrip("\n"))
    if plot_path.is_file():
        lines.append(f"plot: {plot_path} (TL, NF, Total Knowledge, TL_val and training loss per epoch)")
    else:
        lines.append(f"plot: not written yet ({plot_path} is drawn when the run finishes; "
                     f"`metacl ckl show {d} --plot FILE` draws the epochs so far)")
    lines.append(f"metrics: {d / 'metrics.jsonl'} ({len(rows)} rows)"
                 + (f", summary: {summary_path}" if summary_path.is_file() else ""))
    if plot is not None:
        if not rows:
            raise MetaclError(f"{d} has no evaluated epoch yet; nothing to plot")
        p = Path(plot)
        if p.resolve() == plot_path.resolve():
            raise MetaclError(f"--plot {p} is the run's own plot; pass another file name")
        plot_runs([(name, summarize(rows))], p, full_axis=full_axis)
        lines.append(f"wrote {p}")
    return "\n".join(lines) + "\n"
