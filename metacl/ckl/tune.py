"""`tune`: choose a run's hyperparameters on tl_val only, then (optionally) run the choice on more seeds.

Why: a baselines table whose every method ran at one learning rate compares learning rates as
much as methods, and choosing each method's settings by its TL *test* score would make every
row optimistic. Here a grid (`--grid lr=3e-4,1e-3 --grid ewc_lambda=10,100`: the product of
the axes, in the order given) is run with otherwise identical options on the tuning seed(s),
each point a normal `ckl run` folder `OUT/configs/<point>/`, and one point is chosen by

    the mean over tuning seeds of the tl_val accuracy at the honest epoch
    (the epoch `metacl.ckl.report` picks by tl_val), ties -> the earlier grid point,

optionally among only the points whose NF accuracy at that same epoch is >= `nf_floor` (a
forgetting budget). No TL test score takes part; `tune.json` records it per point for reading
only. `OUT/tune.json` holds every point (values, flags, run folder, score, honest epochs, NF at
them), the rule and the choice; `OUT/tune.md` the same as a table.

`then_seeds`: the chosen point is run on those seeds into `OUT/final/`, a normal `ckl run`
folder (`ckl compare OUT/final ...`). Seeds it shares with the tuning run are copied from the
chosen point's `metrics.jsonl`, not retrained: a seed's rows depend only on the options
(`metacl.ckl.config`), so rerunning them would give the same numbers.

Resuming: a point whose folder already holds a finished run of the same options for the tuning
seeds is not rerun; one cut off half-way resumes as any `ckl run` does; so does `final/`.

Grid keys: `lr`, `weight_decay`, `learned_lr`, `learned_anchor_lr`, `learned_pull_scale`, `grad_clip`, `batch_size` and the options the
chosen strategies declare (`Strategy.options`, parsed with their declared type or the type of
their default; list-valued options cannot be tuned here).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from metacl.ckl.config import CklConfig
from metacl.ckl.protocol import run_ckl
from metacl.ckl.report import read_rows, summarize
from metacl.errors import MetaclError
from metacl.strategies.base import get_strategy
from metacl.utils import write_json_atomic

# Run options a grid may vary, with their types; everything else is fixed by the base options.
RUN_KEYS: dict[str, type] = {"lr": float, "weight_decay": float, "learned_lr": float,
                             "learned_anchor_lr": float, "learned_pull_scale": float, "grad_clip": float, "batch_size": int}


def _bool(text: str) -> bool:
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def tunable_keys(strategies: list[str]) -> dict[str, tuple[Callable[[str], Any], tuple | None]]:
    """{grid key: (parser, choices or None)}: the run keys, then each strategy's declared options."""
    keys: dict[str, tuple[Callable[[str], Any], tuple | None]] = {k: (t, None) for k, t in RUN_KEYS.items()}
    for name in strategies:
        cls = get_strategy(name)
        params = inspect.signature(cls.__init__).parameters
        for key, opt in cls.options.items():
            if opt.nargs is not None:  # list-valued (e.g. --oracle-data FILE...): not a grid axis
                continue
            default = params[key].default if key in params else None
            typ = opt.type or (type(default) if default is not None else str)
            keys[key] = (_bool if typ is bool else typ, tuple(opt.choices) if opt.choices is not None else None)
    return keys


def parse_grid(specs: list[str], strategies: list[str]) -> list[tuple[str, list]]:
    """`["lr=1e-4,3e-4", "ewc-lambda=10,100"]` -> `[("lr", [1e-4, 3e-4]), ("ewc_lambda", [10.0, 100.0])]`.

    Each mistake is one `MetaclError` line naming the entry, what is wrong and the valid names.
    """
    keys = tunable_keys(strategies)
    axes: list[tuple[str, list]] = []
    for spec in specs or []:
        key, eq, raw = str(spec).partition("=")
        key = key.strip().replace("-", "_").lstrip("_")
        if not eq or not key or not raw.strip():
            raise MetaclError(f"--grid {spec!r} is not KEY=V1,V2,...; pass e.g. --grid lr=3e-4,1e-3")
        if key not in keys:
            raise MetaclError(f"--grid {key}: not a tunable option of --strategy {' '.join(strategies)}; "
                              f"valid names: {', '.join(keys)}")
        if any(k == key for k, _ in axes):
            raise MetaclError(f"--grid {key} is given twice; list all its values in one entry (--grid {key}=A,B)")
        parse, choices = keys[key]
        values = []
        for text in [t.strip() for t in raw.split(",")]:
            try:
                v = parse(text)
            except (TypeError, ValueError):
                kind = {float: "a number", int: "an integer", _bool: "true or false"}.get(parse, "a valid value")
                raise MetaclError(f"--grid {key}={raw}: {text!r} is not {kind}; pass e.g. --grid {key}=A,B") from None
            if choices is not None and v not in choices:
                raise MetaclError(f"--grid {key}={raw}: {text!r} is not one of {', '.join(map(str, choices))}")
            if v in values:
                raise MetaclError(f"--grid {key}={raw}: {text!r} is listed twice")
            values.append(v)
        axes.append((key, values))
    return axes


def grid_points(axes: list[tuple[str, list]]) -> list[dict[str, Any]]:
    """The product of the axes in order (the first axis varies slowest); one empty point without axes."""
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[vs for _, vs in axes])]


def _text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def point_name(point: dict[str, Any]) -> str:
    """The folder name of a grid point under OUT/configs/: `lr=0.001__ewc_lambda=10` ("base" when empty)."""
    return "__".join(f"{k}={_text(v)}" for k, v in point.items()) or "base"


def point_flags(point: dict[str, Any]) -> str:
    """The `ckl run` flags that set a point: `--lr 0.001 --ewc-lambda 10`."""
    return " ".join(f"--{k.replace('_', '-')} {_text(v)}" for k, v in point.items())


def point_config(base: CklConfig, point: dict[str, Any], out: str | Path) -> CklConfig:
    """`base` with the point's values (run keys as fields, the rest as strategy options) and `out`."""
    run = {k: v for k, v in point.items() if k in RUN_KEYS}
    opts = {**base.strategy_options, **{k: v for k, v in point.items() if k not in RUN_KEYS}}
    return dataclasses.replace(base, out=str(out), strategy_options=opts, **run)


def score_run(run_dir: str | Path, seeds: list[int]) -> dict[str, Any]:
    """A point's score from its metrics rows: tl_val accuracy at the honest epoch (mean over `seeds`),
    the honest epochs, NF there (for `nf_floor`), and TL test there (recorded, never used to choose)."""
    rows = [r for r in read_rows(Path(run_dir) / "metrics.jsonl") if r["seed"] in set(seeds)]
    if {r["seed"] for r in rows} != set(seeds):
        raise MetaclError(f"{run_dir} lacks rows of tuning seeds {sorted(set(seeds) - {r['seed'] for r in rows})}; "
                          "rerun the same `ckl tune` command to finish it")
    summ = summarize(rows)
    honest = summ["aggregate"]["honest"]
    stopped = {str(r["seed"]): r["epoch"] for r in rows if r.get("stopped")}
    return {"tl_val_acc": honest["val_acc"]["mean"],
            "tl_val_acc_per_seed": {s: v["honest"]["val_acc"] for s, v in summ["per_seed"].items()},
            "honest_epoch": {s: v["honest"]["epoch"] for s, v in summ["per_seed"].items()},
            "nf_acc_at_honest": honest["nf_acc"]["mean"],
            "tl_test_acc_at_honest_not_used": honest["tl_acc"]["mean"],
            "epochs_trained": {s: max(r["epoch"] for r in rows if str(r["seed"]) == s) for s in summ["per_seed"]},
            "stopped_at": stopped}


def choice_rule(seeds: list[int], nf_floor: float | None) -> str:
    rule = (f"highest mean tl_val accuracy at the honest epoch (best tl_val epoch) over tuning seeds "
            f"{' '.join(map(str, seeds))}; ties -> the earlier grid point; TL test never used")
    if nf_floor is not None:
        rule += f"; only points with NF accuracy >= {nf_floor:g} at that epoch"
    return rule


def choose(records: list[dict[str, Any]], nf_floor: float | None = None) -> int | None:
    """Index of the chosen record (see `choice_rule`), or None when no record meets `nf_floor`.

    Reads only `tl_val_acc` and, with a floor, `nf_acc_at_honest`: the choice cannot depend on
    TL test scores even when the records carry them.
    """
    best = None
    for i, r in enumerate(records):
        if r.get("tl_val_acc") is None:
            continue
        if nf_floor is not None and not (r.get("nf_acc_at_honest") is not None and r["nf_acc_at_honest"] >= nf_floor):
            continue
        if best is None or r["tl_val_acc"] > records[best]["tl_val_acc"]:  # strictly better: ties keep the earlier
            best = i
    return best


def _finished(run_dir: Path, cfg: CklConfig) -> bool:
    """True when `run_dir` holds a finished run of exactly `cfg` covering its seeds."""
    try:
        stored = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return stored.get("hash") == cfg.hash() == summary.get("hash") and set(cfg.seeds) <= set(summary.get("seeds") or [])


def _check_out(out: Path) -> None:
    """OUT must be new, empty, or an earlier `ckl tune` folder (resumed)."""
    from metacl.utils import check_out_kind

    check_out_kind(out, "ckl tune")
    if out.is_dir() and any(out.iterdir()) and not ((out / "configs").is_dir() or (out / "tune.json").is_file()):
        raise MetaclError(f"--out {out} is not empty and holds no `ckl tune` run (no configs/ or tune.json); "
                          "choose a new or empty folder")


def tune_markdown(result: dict[str, Any]) -> str:
    """tune.md: one row per grid point, the chosen one marked, then the rule."""
    keys = list(result["grid"])
    head = ["point", *keys, "tl_val acc (honest epoch)", "honest epoch", "NF acc there", "TL test there (not used)", "chosen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    for i, c in enumerate(result["configs"]):
        eps = " ".join(str(e) for e in c["honest_epoch"].values())
        mark = "**chosen**" if i == result["chosen"] else ("below NF floor" if not c["eligible"] else "")
        cells = [c["name"], *[_text(c["values"][k]) for k in keys], f(c["tl_val_acc"]), eps, f(c["nf_acc_at_honest"]),
                 f(c["tl_test_acc_at_honest_not_used"]), mark]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Rule: {result['rule']}.")
    lines.append(f"Chosen: {result['chosen_flags'] if result['chosen'] is not None else 'none (no point met the rule)'}")
    return "\n".join(lines) + "\n"


def tune(base: CklConfig, grid: list[str], out: str | Path, nf_floor: float | None = None,
         then_seeds: list[int] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every grid point on `base.seeds`, choose one on tl_val, write OUT/tune.json + tune.md,
    and with `then_seeds` run the choice into OUT/final. Returns what tune.json holds."""
    from metacl.data.lama import load_ckl_data
    from metacl.models.loading import check_causal_lm_path

    out = Path(out)
    axes = parse_grid(grid, base.strategies)  # every mistake is found before anything is written
    points = grid_points(axes)
    configs = [point_config(base, p, out / "configs" / point_name(p)) for p in points]
    for c in configs:
        c.validate()
    for i, p in enumerate(points):
        for name in base.strategies:  # a strategy's constructor checks its values (e.g. a negative lambda)
            strat = get_strategy(name).from_options({**base.strategy_options, **p})
            if i == 0:
                strat.preflight(base.model)  # files a strategy needs, once
    if nf_floor is not None and not 0 <= float(nf_floor) <= 1:
        raise MetaclError(f"--nf-floor must be an accuracy in [0, 1], got {nf_floor}")
    if then_seeds is not None and not then_seeds:
        raise MetaclError("--then-seeds needs at least one seed, e.g. --then-seeds 0 1 2")
    check_causal_lm_path(base.model)
    load_ckl_data(base.data, tl=base.tl, nf=base.nf, tl_val=base.tl_val)
    _check_out(out)  # each point's folder is made by its run_ckl, after that run's own checks

    records = []
    for i, (p, cfg) in enumerate(zip(points, configs), 1):
        run_dir = Path(cfg.out)
        label = f"tune point {i}/{len(points)} {point_name(p)}"
        if _finished(run_dir, cfg):
            log(f"{label}: finished earlier in {run_dir}, not rerun")
        else:
            log(f"{label}: running into {run_dir}")
            run_ckl(cfg, log=log)
        rec = {"name": point_name(p), "values": p, "flags": point_flags(p),
               "run_dir": str(run_dir.relative_to(out)), "hash": cfg.hash(), **score_run(run_dir, cfg.seeds)}
        records.append(rec)
    nf = float(nf_floor) if nf_floor is not None else None
    chosen = choose(records, nf)
    for r in records:
        r["eligible"] = nf is None or (r["nf_acc_at_honest"] is not None and r["nf_acc_at_honest"] >= nf)
    result: dict[str, Any] = {
        "grid": {k: vs for k, vs in axes}, "tuning_seeds": list(base.seeds), "strategies": list(base.strategies),
        "base": {k: v for k, v in base.identity().items()}, "nf_floor": nf, "rule": choice_rule(base.seeds, nf),
        "configs": records, "chosen": chosen,
        "chosen_values": records[chosen]["values"] if chosen is not None else None,
        "chosen_flags": records[chosen]["flags"] if chosen is not None else None,
        "chosen_run_dir": records[chosen]["run_dir"] if chosen is not None else None, "final": None,
    }
    write_json_atomic(out / "tune.json", result)
    (out / "tune.md").write_text(tune_markdown(result))
    if chosen is None:
        raise MetaclError(f"no grid point has NF accuracy >= {nf:g} at its honest epoch (see {out / 'tune.md'}); "
                          "lower --nf-floor or widen the grid")
    log(f"chosen by tl_val: {result['chosen_flags'] or '(the base options)'} "
        f"(tl_val {records[chosen]['tl_val_acc']:.3f}, {records[chosen]['name']})")

    if then_seeds:
        final = out / "final"
        fcfg = dataclasses.replace(configs[chosen], out=str(final), seeds=[int(s) for s in then_seeds])
        _seed_final(Path(configs[chosen].out), final, fcfg, log)
        run_ckl(fcfg, log=log)
        result["final"] = "final"
        result["final_seeds"] = list(fcfg.seeds)
        write_json_atomic(out / "tune.json", result)
    return result


def _seed_final(src: Path, final: Path, fcfg: CklConfig, log: Callable[[str], None]) -> None:
    """Start OUT/final from the chosen point's rows of the seeds it shares (same options, same rows)."""
    if final.exists():  # resuming: run_ckl checks the folder's identity and skips finished seeds
        return
    shared = [s for s in fcfg.seeds if s in set(json.loads((src / "summary.json").read_text()).get("seeds") or [])]
    if not shared:
        return
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copyfile(src / "config.json", tmp / "config.json")
    rows = [r for r in read_rows(src / "metrics.jsonl") if r["seed"] in set(shared)]
    (tmp / "metrics.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    tmp.rename(final)
    log(f"final: seed(s) {' '.join(map(str, shared))} copied from the tuning run {src} (same options), not retrained")
