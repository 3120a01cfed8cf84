"""The task-sequence benchmark: strategies learn P world updates in order (`metacl ckl sequence`).

Why: one-shot LAMA-ckl has one new task, so it cannot tell whether learning period 3 erases
period 1. Here each strategy learns the periods of a `metacl.data.world_sequence` one after the
other, in one model, with the same training loop as `ckl run` (`metacl.ckl.train.train_task`;
`ctx.seen_docs` grows with every finished period, `ctx.old_corpus` is the pre-training text).
After each period every period's probes and the old world's (NF) probes are scored with the
LAMA-ckl metric (teacher-forced object-token accuracy), giving

    R[i, j] = accuracy on period j after learning periods 1..i+1           (P x P)
    b[j]    = accuracy of the base model on period j                       (for FWT)
    ACC, BWT, FWT from `metacl.core.cl_metrics` (GEM definitions), NF after each period.

Outputs in `--out`: `sequence/` (the generated periods), `runs/<strategy>/seed_<s>.json` (one
per finished seed: a rerun skips it, so a killed run resumes), `summary.json` (per strategy:
mean matrix, ACC/BWT/FWT/NF mean ± std over seeds, the per-seed numbers), `table.md`, and
`heatmap_<strategy>.png` (the mean accuracy matrix plus the NF column).

Strategies are run one at a time; `a+b` composes them within one run (e.g. `taalm+recadam`).
`--optimizer sgd|learned` (as in `ckl run`) trains with another optimizer; such rows are named
`<strategy>@<optimizer>` so they sit beside the AdamW rows of the same `--out`. A non-training
strategy (in-context learning) keeps every document seen so far as its memory, the analogue of
a trained model having learned all earlier periods.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from metacl.core.cl_metrics import cl_summary
from metacl.errors import MetaclError
from metacl.utils import default_device, write_json_atomic


@dataclass
class SequenceConfig:
    model: str = ""
    world: str = ""
    out: str = ""
    strategies: list[str] = field(default_factory=lambda: ["finetune"])
    strategy_options: dict[str, Any] = field(default_factory=dict)
    periods: int = 4
    facts_per_period: int = 25
    data_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int = 5
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 8
    max_length: int = 256
    eval_batch_size: int = 32
    max_nf: int | None = None
    device: str | None = None
    progress: bool = True
    optimizer: str = "adamw"
    optimizer_path: str | None = None
    learned_lr: float = 1.0
    learned_anchor_lr: float | None = None  # the learned optimizer's pull to the start at this multiplier; None = learned_lr
    precision: str = "fp32"              # fp32 | bf16 (autocast around forward passes, fp32 weights)
    ckpt_every: int | None = None        # training steps between mid-seed checkpoints; None = once per epoch, 0 = off
    max_bad_steps: int = 10              # stop after this many skipped (non-finite) steps; 0 = never stop

    def validate(self) -> "SequenceConfig":
        if not self.model:
            raise MetaclError("no model given; pass --model PATH (a base LM pretrained on the world's pretrain_corpus)")
        if not self.world:
            raise MetaclError("no world given; pass --world DIR (a folder written by `metacl data world`)")
        if not self.out:
            raise MetaclError("no output folder given; pass --out DIR")
        if not self.strategies:
            raise MetaclError("no strategy given; pass e.g. --strategies finetune spg (see `metacl ckl strategies`)")
        if self.epochs < 1 or self.batch_size < 1:
            raise MetaclError(f"--epochs and --batch-size must be >= 1, got {self.epochs} and {self.batch_size}; pass e.g. --epochs 4 --batch-size 8")
        if not self.seeds:
            raise MetaclError("no seeds given; pass e.g. --seeds 0 1 2")
        from metacl.ckl.optimizers import OPTIMIZERS

        if self.optimizer not in OPTIMIZERS:
            raise MetaclError(f"unknown --optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.optimizer_path and self.optimizer != "learned":
            raise MetaclError(f"--optimizer-path {self.optimizer_path} is only used by --optimizer learned; "
                              "add --optimizer learned or drop --optimizer-path")
        from metacl.ckl.config import check_learned_anchor_lr

        check_learned_anchor_lr(self.optimizer, self.learned_anchor_lr)
        if self.ckpt_every is not None and int(self.ckpt_every) < 0:
            raise MetaclError(f"--ckpt-every must be >= 0 training steps (0 = no checkpoints), got {self.ckpt_every}")
        if int(self.max_bad_steps) < 0:
            raise MetaclError(f"--max-bad-steps must be >= 0 (0 = never stop), got {self.max_bad_steps}")
        from metacl.precision import check_precision

        check_precision(self.precision)
        return self

    def run_name(self, spec: str) -> str:
        """The row (and runs/ subfolder) name: the strategy spec, plus @optimizer unless AdamW."""
        return spec if self.optimizer == "adamw" else f"{spec}@{self.optimizer}"

    def hash(self) -> str:
        d = asdict(self)
        # strategies, their options and seeds are per-run (each seed file records its own), so one
        # --out can collect strategies run by several commands over the same sequence
        # (the optimizer too: its rows get their own name, see run_name)
        for k in ("out", "device", "progress", "eval_batch_size", "strategies", "seeds", "strategy_options",
                  "optimizer", "optimizer_path", "learned_lr", "learned_anchor_lr", "ckpt_every", "max_bad_steps"):
            d.pop(k)
        if d.get("precision") == "fp32":  # added later: hashed only when not the default, so older folders resume
            d.pop("precision")
        d["model"], d["world"] = str(Path(self.model).resolve()), str(Path(self.world).resolve())
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- metrics

def sequence_metrics(R, baseline=None) -> dict[str, float]:
    """ACC, BWT, FWT of one accuracy matrix (R[i, j]: acc on period j after period i)."""
    return cl_summary(R, baseline)


def mean_std(xs) -> dict[str, Any]:
    xs = [float(x) for x in xs]
    m = sum(xs) / len(xs) if xs else float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "values": xs}


# --------------------------------------------------------------------------- running

def _evaluate(model, tok, probe_sets: list[list], nf: list, cfg: SequenceConfig, device, prefix_fn=None):
    from metacl.core.probes import probe_accuracy
    from metacl.precision import autocast

    with autocast(getattr(cfg, "precision", "fp32"), device):
        accs = [probe_accuracy(model, tok, items, batch_size=cfg.eval_batch_size, device=device, exact_match=False,
                               prefix_fn=prefix_fn)["acc"] for items in probe_sets]
        nf_acc = probe_accuracy(model, tok, nf, batch_size=cfg.eval_batch_size, device=device, exact_match=False,
                                prefix_fn=prefix_fn)["acc"]
    return accs, nf_acc


def run_strategy_seed(cfg: SequenceConfig, spec: str, seed: int, periods: list[list[dict]], nf: list[dict],
                      old_corpus: list[str], device, log: Callable[[str], None] = print, *, ckpt_dir: Path | None = None,
                      info=None) -> dict[str, Any]:
    """Learn the periods in order with strategy `spec` ('a+b' composes); return R, NF curve, timing.

    A P-task stream of `metacl.ckl.stream.run_tasks`, probed after every period. With `ckpt_dir`
    it checkpoints there (every `cfg.ckpt_every` steps, default once per epoch) together with
    the scores of the finished periods, and a run killed mid-way resumes from it to the same R.
    """
    from metacl import distributed as D
    from metacl.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
    from metacl.ckl.stream import run_tasks
    from metacl.strategies.base import probe_prefix_fn

    import torch

    info = info or D.SINGLE
    names = spec.split("+")
    R: list[list[float]] = []
    nf_curve: list[float] = []
    resume = None
    if ckpt_dir is not None and find_checkpoint(ckpt_dir) is not None:
        tensors, state = load_checkpoint(ckpt_dir)
        if state.get("hash") == cfg.hash() and state.get("spec") == spec and state.get("seed") == seed:
            resume = (tensors, state)
            R, nf_curve = [list(r) for r in state["R"]], list(state["nf"])
            log(f"{spec} seed {seed}: resuming from {ckpt_dir} (period {state['task'] + 1}, "
                f"step {state['train']['position']['step']}; periods 1..{state['task']} are retrained, not re-scored)")
    t0 = time.time()

    def evaluate(ctx, strategies, at) -> None:
        if not info.is_main:
            D.barrier(info)
            return
        with torch.no_grad():
            accs, nf_acc = _evaluate(ctx.model, ctx.tokenizer, periods, nf, cfg, device, probe_prefix_fn(strategies, ctx))
        R.append(accs)
        nf_curve.append(nf_acc)
        log(f"{spec} seed {seed} after period {at.task + 1}: " + " ".join(f"{a:.3f}" for a in accs)
            + f" | NF {nf_acc:.3f} ({time.time() - t0:.0f}s)")
        D.barrier(info)

    def save(tensors: dict, state: dict) -> None:
        done = state["task"]  # periods finished before the one in progress
        save_checkpoint(ckpt_dir, tensors, {"hash": cfg.hash(), "spec": spec, "seed": seed,
                                            "R": R[:done], "nf": nf_curve[:done], **state})

    stats = run_tasks(cfg, names, seed, [[r["evidence"] for r in rows] for rows in periods], device=device,
                      old_corpus=old_corpus, on_probe=evaluate, probe="task",
                      save=save if ckpt_dir is not None else None, ckpt_every=cfg.ckpt_every, resume=resume, info=info)
    opts = {k: v for k, v in cfg.strategy_options.items()}
    optim = {"optimizer": cfg.optimizer, "optimizer_path": cfg.optimizer_path, "learned_lr": cfg.learned_lr}
    if cfg.learned_anchor_lr is not None:
        optim["learned_anchor_lr"] = cfg.learned_anchor_lr
    return {"strategy": spec, "name": cfg.run_name(spec), "seed": seed, "strategy_options": opts, "optim": optim,
            "R": R, "nf": nf_curve, "losses": stats["losses"], "seconds": round(time.time() - t0, 1)}


def heatmap(name: str, R: list[list[float]], nf: list[float], path: Path) -> Path:
    """The mean accuracy matrix (rows: after period i; columns: period j) plus an NF column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    P = len(R)
    data = [list(row) + [n] for row, n in zip(R, nf)]
    fig, ax = plt.subplots(figsize=(1.1 * (P + 1) + 1.5, 0.8 * P + 1.5))
    im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis")
    for i in range(P):
        for j in range(P + 1):
            v = data[i][j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(P + 1), [f"P{j + 1}" for j in range(P)] + ["NF"])
    ax.set_yticks(range(P), [f"after P{i + 1}" for i in range(P)])
    ax.axvline(P - 0.5, color="white", lw=2)
    ax.set_title(f"{name}: accuracy after each period")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarize_runs(results: dict[str, list[dict]], baseline: list[float], nf0: float) -> dict[str, Any]:
    """Per strategy: mean matrix, ACC/BWT/FWT/NF mean ± std over seeds, and the per-seed values."""
    out = {}
    for spec, runs in results.items():
        per_seed = [sequence_metrics(r["R"], baseline) for r in runs]
        P = len(runs[0]["R"])
        mean_R = [[sum(r["R"][i][j] for r in runs) / len(runs) for j in range(P)] for i in range(P)]
        mean_nf = [sum(r["nf"][i] for r in runs) / len(runs) for i in range(P)]
        out[spec] = {
            "seeds": [r["seed"] for r in runs], "R_mean": mean_R, "nf_mean": mean_nf,
            "R": {str(r["seed"]): r["R"] for r in runs}, "nf": {str(r["seed"]): r["nf"] for r in runs},
            "ACC": mean_std(m["ACC"] for m in per_seed), "BWT": mean_std(m["BWT"] for m in per_seed),
            "FWT": mean_std(m["FWT"] for m in per_seed), "NF": mean_std(r["nf"][-1] for r in runs),
            "NF_drop": mean_std(r["nf"][-1] - nf0 for r in runs),
            "seconds": mean_std(r["seconds"] for r in runs),
        }
    return out


def table_markdown(summary: dict[str, Any]) -> str:
    """One row per strategy (mean ± std over seeds) and a line naming the best per column."""
    strat = summary["strategies"]
    cols = [("ACC", True), ("BWT", True), ("FWT", True), ("NF", True)]
    lines = ["| strategy | seeds | ACC | BWT | FWT | NF (final) | s / seed |", "|---|---|---|---|---|---|---|"]
    for name, s in strat.items():
        cells = " | ".join(f"{s[c]['mean']:.3f} ± {s[c]['std']:.3f}" for c, _ in cols)
        lines.append(f"| {name} | {len(s['seeds'])} | {cells} | {s['seconds']['mean']:.0f} |")
    lines.append("")
    lines.append(f"Base model: NF {summary['nf0']:.3f}; periods " + ", ".join(f"{b:.3f}" for b in summary["baseline"]) + ".")
    if len(strat) > 1:
        best = []
        for c, _ in cols:
            ranked = sorted(strat, key=lambda n: -strat[n][c]["mean"])
            a, b = ranked[0], ranked[1]
            best.append(f"{c}: {a} ({strat[a][c]['mean']:.3f}, +{strat[a][c]['mean'] - strat[b][c]['mean']:.3f} over {b})")
        lines.append("Best per column (higher is better): " + "; ".join(best) + ".")
    return "\n".join(lines) + "\n"


def run_sequence(cfg: SequenceConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every strategy x seed over the sequence; write summary.json, table.md and heat-maps.

    Under torchrun every rank trains (each a share of every global batch, as in `ckl run`);
    rank 0 alone scores and writes.
    """
    from metacl import distributed as D
    from metacl.checkpoint import remove_checkpoint
    from metacl.ckl.stream import build_strategies
    from metacl.data.world_sequence import build_sequence, load_world, write_sequence
    from metacl.models.loading import check_causal_lm_path, load_model_and_tokenizer
    from metacl.strategies.base import get_strategy
    from metacl.utils import check_run_folder

    cfg.validate()
    for spec in cfg.strategies:
        for n in spec.split("+"):
            get_strategy(n)
    # every input is checked before --out is touched, so a refused run leaves nothing behind (H6)
    from metacl.models.context import fit_max_length

    cfg.max_length = fit_max_length(check_causal_lm_path(cfg.model), cfg.max_length)  # clamp to the model's context
    world = load_world(cfg.world)
    for spec in cfg.strategies:
        for strat in build_strategies(spec.split("+"), cfg.strategy_options):
            strat.preflight(cfg.model)
    info = D.init(cfg.device)
    if not info.is_main:
        log = _quiet
    out, refused = Path(cfg.out), None
    opts = dict(n_periods=cfg.periods, facts_per_period=cfg.facts_per_period, seed=cfg.data_seed)
    if info.is_main:
        try:
            out = check_run_folder(cfg.out, "ckl sequence", cfg.hash())
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / "config.json", {"hash": cfg.hash(), "config": asdict(cfg)})
            seq = write_sequence(out / "sequence", world, **opts)
        except MetaclError as e:
            refused = e
    if D.all_reduce_flag(refused is not None, info):  # also a barrier: the folder is settled
        raise refused or MetaclError(f"rank 0 refused --out {cfg.out} (see its error line); fix that and relaunch")
    if not info.is_main:
        seq = build_sequence(world, **opts)
    periods, nf = seq["periods"], seq["nf"][: cfg.max_nf] if cfg.max_nf else seq["nf"]
    old_corpus = [r["text"] for r in world["pretrain_corpus"]]
    device = default_device(cfg.device, info)
    log(f"ckl sequence: {len(periods)} periods x {cfg.facts_per_period} facts, NF {len(nf)}, "
        f"strategies {', '.join(cfg.strategies)}, seeds {cfg.seeds}, {cfg.epochs} epochs/period, device {device}"
        + (f", {info.world_size} data-parallel ranks" if info.enabled else ""))

    base_path = out / "base.json"
    if info.is_main:
        if base_path.is_file():
            base = json.loads(base_path.read_text())
        else:
            model, tok = load_model_and_tokenizer(cfg.model, device=device)
            accs, nf0 = _evaluate(model, tok, periods, nf, cfg, device)
            base = {"baseline": accs, "nf0": nf0}
            write_json_atomic(base_path, base)
            del model
    D.barrier(info)

    results: dict[str, list[dict]] = {}
    for spec in cfg.strategies:
        name = cfg.run_name(spec)
        results[name] = []
        for seed in cfg.seeds:
            path = out / "runs" / name / f"seed_{seed}.json"
            ckpt_dir = out / "runs" / name / f"checkpoint_seed_{seed}"
            D.barrier(info)  # every rank decides on the same files
            if path.is_file():
                log(f"{name} seed {seed}: done already ({path}), skipped")
                r = json.loads(path.read_text())
            else:
                r = run_strategy_seed(cfg, spec, seed, periods, nf, old_corpus, device, log,
                                      ckpt_dir=ckpt_dir if cfg.ckpt_every != 0 else None, info=info)
                if info.is_main:
                    write_json_atomic(path, r)
                    remove_checkpoint(ckpt_dir)  # the seed is complete; its checkpoint is obsolete
            results[name].append(r)
    D.barrier(info)
    if not info.is_main:
        return {"rank": info.rank}
    # strategies finished earlier into the same --out (e.g. by a parallel command) join the table
    for d in sorted((out / "runs").iterdir()) if (out / "runs").is_dir() else []:
        files = [d / f"seed_{s}.json" for s in cfg.seeds]
        if d.name not in results and all(f.is_file() for f in files):
            results[d.name] = [json.loads(f.read_text()) for f in files]
    summary = {"hash": cfg.hash(), "config": asdict(cfg), "sequence": seq["meta"], "device": str(device),
               "baseline": base["baseline"], "nf0": base["nf0"],
               # sorted: the table reads the same whichever command of a shared --out ran last
               "strategies": summarize_runs(dict(sorted(results.items())), base["baseline"], base["nf0"])}
    write_json_atomic(out / "summary.json", summary)
    (out / "table.md").write_text(table_markdown(summary))
    for spec, s in summary["strategies"].items():
        heatmap(spec, s["R_mean"], s["nf_mean"], out / f"heatmap_{spec}.png")
    return summary


def _quiet(msg: str) -> None:
    """Log function of non-main ranks: rank 0 speaks for the job."""
