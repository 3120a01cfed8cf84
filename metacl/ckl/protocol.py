"""`run_ckl`: the continual-knowledge-learning protocol (LAMA-ckl, TAALM 2024), for any strategy.

For each seed: load the base model fresh from its path, build the strategies, then

    evaluate TL, NF, TL_val probes                      (epoch 0: what the model knew before)
    repeat E epochs: train on the TL (+ TL_val) evidence documents, evaluate the three probe sets

and write to `--out`:

- `config.json`: every option plus its hash (a folder holding a different run is refused);
- `metrics.jsonl`: one row per seed and epoch (teacher-forced accuracy and exact match for TL,
  NF and TL_val, training loss, skipped steps, seconds);
- `summary.json`, `table.md`, `plot.png`: see `metacl.ckl.report`.

TL_val (used only to choose an epoch under the "honest" protocol): the data's `tl_val` split
when it has one (its documents are trained on too, so choosing by it mimics choosing by TL).
When there is none (the official LAMA-ckl files), a deterministic 10% of the TL items (lowest
SHA-1 of their uuid) is carved out: still trained on, but excluded from the TL score, so the
reported TL accuracy is over the other 90%.

Resuming: seeds whose every epoch is already in `metrics.jsonl` are not rerun. A seed cut off
half-way continues from `OUT/checkpoint/` (written every `--ckpt-every` training steps, by
default once per epoch; see `metacl.ckl.train` for what it holds) and gets the same rows as an
uninterrupted run; rows written after that checkpoint are dropped and recomputed. Without a
checkpoint for the seed it is rerun from scratch. A finished seed's checkpoint is deleted. The
seed list is not part of the run's identity, so `--seeds 0 1 2` in the folder of a `--seeds 0`
run only adds seeds 1 and 2; the summary covers exactly the seeds asked for.

Early stop (`--patience N`, off by default): a seed stops training after the epoch at which
its honest pick (best tl_val accuracy among epochs >= 1, ties -> earliest; see
`metacl.ckl.report`) lies N epochs back. That epoch's row carries `"stopped": "stopped: tl_val
did not improve for N epochs"`, `summary.json` lists it under `stopped`, and both protocols pick
from the shorter curve (the honest epoch is always on it). A stopped seed counts as complete
when the run is resumed.

Faults: steps with a non-finite loss or gradient are skipped and counted (`skipped_steps`);
after `--max-bad-steps` of them the run stops with one line naming seed, epoch and step, the
last checkpoint intact and no summary written. `--precision bf16` runs forward passes (training
and probes) under bf16 autocast with fp32 weights; every row records the peak memory so far
(`peak_mem_mib`, measured as `peak_mem_kind` says, as in the meta-trainers' summaries).

Data parallel: launched under torchrun (`torchrun --nproc_per_node 2 -m metacl.cli.main ckl run
...`), the ranks split every global batch (`--batch-size` stays the global size) and average
their gradients; rank 0 alone evaluates and writes (see `metacl.ckl.train`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from metacl.ckl.config import CklConfig
from metacl.ckl.guidance import warn_if_stalled
from metacl.ckl.preflight import fit_run_to_model
from metacl.core.probes import probe_accuracy
from metacl.ckl.report import plot_runs, read_rows, run_name, summarize, table_markdown
from metacl.checkpoint import find_checkpoint, load_checkpoint, remove_checkpoint, save_checkpoint
from metacl.ckl.stream import Probe, build_strategies, run_tasks
from metacl.ckl.train import TooManyBadSteps
from metacl.errors import MetaclError
from metacl.precision import autocast, peak_memory
from metacl.strategies.base import Strategy, TrainContext, get_strategy, probe_prefix_fn
from metacl.utils import default_device, write_json_atomic


def carve_tl_val(tl: list, fraction: float = 0.1) -> tuple[list, list]:
    """(tl_test, tl_val): the items with the lowest SHA-1(uuid) form tl_val (at least one)."""
    k = max(1, math.ceil(fraction * len(tl)))
    if len(tl) - k < 1:
        raise MetaclError(f"TL has only {len(tl)} item(s); need at least 2 to hold some out as tl_val (or give --tl-val FILE)")
    ranked = sorted(range(len(tl)), key=lambda i: hashlib.sha1(str(tl[i].uuid).encode()).hexdigest())
    val_idx = set(ranked[:k])
    return [x for i, x in enumerate(tl) if i not in val_idx], [x for i, x in enumerate(tl) if i in val_idx]


def _prepare_out(cfg: CklConfig) -> Path:
    from metacl.utils import check_run_folder

    out = check_run_folder(cfg.out, "ckl run", cfg.hash(), cfg.identity())
    cfg_path = out / "config.json"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg_path, {"hash": cfg.hash(), "config": cfg.identity()})
    return out


def _quiet(msg: str) -> None:
    """Log function of non-main ranks: rank 0 speaks for the job."""


def _checkpoint_for(ckpt_dir: Path, cfg: CklConfig, seed: int) -> tuple[dict, dict] | None:
    """The mid-seed checkpoint of `seed` in this run folder, or None (absent, or of another seed)."""
    if find_checkpoint(ckpt_dir) is None:
        return None
    tensors, state = load_checkpoint(ckpt_dir)
    if state.get("hash") != cfg.hash():
        raise MetaclError(f"{ckpt_dir} belongs to a different run (hash {state.get('hash')} != {cfg.hash()}); "
                          "delete it or choose another --out")
    return (tensors, state) if state.get("seed") == seed else None


def stop_reason(patience: int) -> str:
    """What a row of the epoch a seed stopped at says (`--patience`)."""
    return f"stopped: tl_val did not improve for {patience} epochs"


def early_stop(history: list[dict], epoch: int, patience: int | None, epochs: int) -> str | None:
    """The stop reason when training should end after `epoch`, else None.

    `history`: this seed's rows up to and including `epoch`. The rule follows the honest pick of
    `metacl.ckl.report` exactly (best `val_acc` among epochs >= 1, ties -> the earliest), so the
    epoch the honest protocol will choose is always on the shortened curve: stop when that epoch
    lies `patience` or more epochs back. Never after the last epoch (nothing left to skip).
    """
    if not patience or epoch < 1 or epoch >= epochs:
        return None
    trained = [r for r in history if 1 <= r["epoch"] <= epoch and r.get("val_acc") is not None]
    if not trained:
        return None
    best = max(trained, key=lambda r: (r["val_acc"], -r["epoch"]))
    return stop_reason(patience) if epoch - best["epoch"] >= patience else None


def _stopped_at(rows: list[dict], seed: int) -> int | None:
    """The epoch at which `seed` was stopped early (its row says so), or None."""
    return min((r["epoch"] for r in rows if r["seed"] == seed and r.get("stopped")), default=None)


def _completed(rows: list[dict], seed: int, last_epoch: int) -> bool:
    stopped = _stopped_at(rows, seed)  # an early-stopped seed is complete at its stopping epoch
    if stopped is not None:
        last_epoch = min(last_epoch, stopped)
    return {r["epoch"] for r in rows if r["seed"] == seed} >= set(range(last_epoch + 1))


def run_ckl(cfg: CklConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the protocol for every seed in `cfg.seeds`; returns the summary (also written to disk)."""
    from metacl.data.corpus import read_corpus
    from metacl.data.lama import load_ckl_data
    from metacl.models.loading import check_causal_lm_path

    cfg.validate()
    for n in cfg.strategies:  # unknown names fail before anything is written
        get_strategy(n)
    model_config = check_causal_lm_path(cfg.model)  # so does a wrong --model
    checked = build_strategies(cfg.strategies, cfg.strategy_options)  # and a strategy's bad inputs
    for strat in checked:
        strat.preflight(cfg.model)
    data = load_ckl_data(cfg.data, tl=cfg.tl, nf=cfg.nf, tl_val=cfg.tl_val)
    tl, nf, tl_val = data.tl, data.nf, data.tl_val
    if cfg.max_items is not None:
        tl, nf = tl[: cfg.max_items], nf[: cfg.max_items]
        tl_val = tl_val[: max(1, math.ceil(cfg.tl_val_fraction * cfg.max_items))] if tl_val else tl_val
    if tl_val:
        val_source, tl_test, train_items = "tl_val split", tl, tl + tl_val
    else:
        tl_test, tl_val = carve_tl_val(tl, cfg.tl_val_fraction)
        val_source, train_items = f"carved {len(tl_val)} of {len(tl)} TL items (trained on, not scored as TL)", tl
    train_docs = [it.evidence for it in train_items]
    fit_run_to_model(cfg, model_config, {"TL": tl_test, "NF": nf, "TL_val": tl_val})  # --max-length vs the model's context
    old_corpus = read_corpus([cfg.old_corpus]) if cfg.old_corpus else list(data.old_corpus)
    needy = [s.name for s in checked if getattr(s, "needs_old_corpus", False)]
    if cfg.optimizer == "learned" and int(getattr(cfg, "learned_prime_docs", 0) or 0) > 0:
        needy.append("--learned-prime-docs")
    if needy and not old_corpus:
        where = cfg.old_corpus or (f"{cfg.data}/pretrain_corpus.jsonl" if cfg.data else "no --data folder")
        raise MetaclError(f"strategy {', '.join(needy)} needs old text (rehearsal or an importance estimate on old data) "
                          f"but the run has none ({where} missing or empty); pass --old-corpus FILE with the base LM's "
                          "pre-training text (JSONL with `text`)")

    from metacl import distributed as D

    info = D.init(cfg.device)
    if not info.is_main:
        log = _quiet
    out, refused = Path(cfg.out), None
    if info.is_main:
        try:
            out = _prepare_out(cfg)
        except MetaclError as e:
            refused = e
    # doubles as a barrier: config.json is settled before other ranks read the folder, and a
    # refusal on rank 0 stops every rank instead of leaving them waiting
    if D.all_reduce_flag(refused is not None, info):
        raise refused or MetaclError(f"rank 0 refused --out {cfg.out} (see its error line); fix that and relaunch")
    metrics_path = out / "metrics.jsonl"
    rows = read_rows(metrics_path)
    device = default_device(cfg.device, info)
    trains = any(s.trains for s in checked)
    last_epoch = cfg.epochs if trains else 0
    ckpt_dir = out / "checkpoint"
    log(f"ckl run {run_name(cfg.strategies, cfg.optimizer)}: TL {len(tl_test)} scored, TL_val {len(tl_val)} ({val_source}), "
        f"NF {len(nf)}, {len(train_docs)} training documents, old corpus {len(old_corpus)} docs, device {device}"
        + (f", {info.world_size} data-parallel ranks" if info.enabled else ""))

    for seed in cfg.seeds:
        if _completed(rows, seed, last_epoch):
            log(f"seed {seed}: already complete in {metrics_path}, skipped")
            continue
        resume = _checkpoint_for(ckpt_dir, cfg, seed) if trains else None
        if resume is not None and not _completed(rows, seed, int(resume[1]["train"]["position"]["epoch"]) - 1):
            log(f"seed {seed}: {ckpt_dir} is ahead of {metrics_path} (rows missing), rerunning the seed from scratch")
            resume = None
        if resume is not None:  # keep the rows evaluated before the checkpoint, recompute the rest
            first_todo = int(resume[1]["train"]["position"]["epoch"])
            log(f"seed {seed}: resuming from {ckpt_dir} (epoch {first_todo}, step {resume[1]['train']['position']['step']})")
        else:
            first_todo = 0
        rows = [r for r in rows if r["seed"] != seed or r["epoch"] < first_todo]
        D.barrier(info)  # every rank has read the checkpoint and the rows before rank 0 rewrites them
        if info.is_main:  # temp file + rename: a kill here must not lose the rows that are kept
            tmp = metrics_path.with_name(f".{metrics_path.name}.tmp-{os.getpid()}")
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
            os.replace(tmp, metrics_path)
        fresh, checked = checked, None  # the first seed run uses the pre-flight instances (nothing ran on them)
        try:
            rows += _run_seed(cfg, seed, {"tl": tl_test, "nf": nf, "val": tl_val}, train_docs, old_corpus, metrics_path,
                              device=device, log=log, resume=resume, ckpt_dir=ckpt_dir, info=info, strategies=fresh)
        except TooManyBadSteps as e:
            kept = f"the last checkpoint {ckpt_dir} is kept" if find_checkpoint(ckpt_dir) else "no checkpoint was written yet"
            raise TooManyBadSteps(f"{e}; {kept}, no summary written") from None
        D.barrier(info)
        if info.is_main:
            remove_checkpoint(ckpt_dir)  # the seed's rows are complete; its checkpoint is obsolete

    if not info.is_main:
        return {"rank": info.rank}
    wanted = set(cfg.seeds)  # the folder may hold more seeds from an earlier call; report the asked ones
    summ = summarize([r for r in rows if r["seed"] in wanted])
    name = run_name(cfg.strategies, cfg.optimizer)
    summary = {"name": name, "hash": cfg.hash(), "strategies": cfg.strategies, "model": cfg.model,
               "data": cfg.data or {"tl": cfg.tl, "nf": cfg.nf, "tl_val": cfg.tl_val},
               "n_tl": len(tl_test), "n_nf": len(nf), "n_tl_val": len(tl_val), "tl_val_source": val_source,
               "epochs": cfg.epochs, "optimizer": cfg.optimizer, "lr": cfg.lr, "device": str(device),
               "patience": getattr(cfg, "patience", None), "stopped": stopped_seeds(rows, cfg.seeds),
               # the float path: the learned optimizer's numbers depend on torch's thread count (docs/results/lo_v2.md)
               "torch": torch.__version__, "torch_threads": torch.get_num_threads(), **summ}
    if cfg.optimizer == "learned":
        summary["learned_lr"] = cfg.learned_lr
        summary["learned_anchor_lr"] = cfg.learned_anchor_lr
        summary["learned_prime_docs"] = cfg.learned_prime_docs
        summary["learned_pull_scale"] = cfg.learned_pull_scale
    write_json_atomic(out / "summary.json", summary)
    table = table_markdown([(name, summ)])
    (out / "table.md").write_text(table)
    plot_runs([(name, summ)], out / "plot.png", full_axis=getattr(cfg, "plot_full_axis", False))
    return summary


def stopped_seeds(rows: list[dict], seeds) -> dict[str, dict]:
    """{seed: {"epoch", "reason"}} for the seeds among `seeds` that stopped early (`--patience`)."""
    out = {}
    for s in seeds:
        at = _stopped_at(rows, s)
        if at is not None:
            row = next(r for r in rows if r["seed"] == s and r["epoch"] == at)
            out[str(s)] = {"epoch": at, "reason": row["stopped"]}
    return out


def overwrite_probes(items) -> tuple[list[dict], list[dict]]:
    """For TL facts that overwrite an old one (rows with `old_object`, as world v2 writes them):
    the probes asking for the new object and the same probes completed with the old object.

    Why: a model can learn the new object yet still answer the old one; TemporalWiki-style
    benchmarks report both. Scored as `tl_overwrite_acc` and `tl_old_object_acc` in metrics.jsonl.
    """
    from metacl.core.probes import item_field, split_probe

    new, old = [], []
    for it in items:
        extra = item_field(it, "extra", None) or {}
        old_obj = extra.get("old_object") if isinstance(extra, dict) else None
        old_obj = old_obj or (it.get("old_object") if isinstance(it, dict) else None)
        if not old_obj:
            continue
        prefix, obj = split_probe(it)
        new.append({"task_descriptive": f"{prefix} {obj}", "object": obj})
        old.append({"task_descriptive": f"{prefix} {old_obj}", "object": old_obj})
    return new, old


def _run_seed(cfg: CklConfig, seed: int, probes: dict[str, list], train_docs: list[str], old_corpus: list[str],
              metrics_path: Path, *, device: torch.device, log: Callable[[str], None], resume=None, ckpt_dir=None,
              info=None, strategies: list[Strategy] | None = None) -> list[dict]:
    """One seed of LAMA-ckl: a one-task stream (`metacl.ckl.stream.run_tasks`) probed every epoch.

    `probes`: the "tl", "nf" and "val" probe sets; each probe appends one row to `metrics_path`.
    `strategies`: fresh instances to use instead of building them (see `run_tasks`).
    """
    from metacl import distributed as D

    info = info or D.SINGLE
    rows: list[dict] = []
    t0 = time.time()
    precision = getattr(cfg, "precision", "fp32")

    over_new, over_old = overwrite_probes(probes.get("tl") or [])

    def evaluate(ctx: TrainContext, strategies: list[Strategy], at: Probe) -> bool:
        if not info.is_main:  # rank 0 evaluates and writes; the others wait, then learn whether to stop
            D.barrier(info)
            return D.all_reduce_flag(False, info)
        epoch, stats = at.epoch, at.stats
        pf = probe_prefix_fn(strategies, ctx)
        row: dict[str, Any] = {"seed": seed, "epoch": epoch, **stats}
        for key, items in probes.items():
            with autocast(precision, device):
                r = probe_accuracy(ctx.model, ctx.tokenizer, items, batch_size=cfg.eval_batch_size, prefix_fn=pf,
                                   device=device, exact_match=cfg.exact_match)
            row[f"{key}_acc"], row[f"{key}_em"] = r["acc"], r["em"]
            row[f"{key}_prompt_tokens"], row[f"{key}_seconds_per_query"] = r["prompt_tokens"], r["seconds_per_query"]
        if over_new:  # overwritten facts (world v2): the new object's accuracy, and the old one's
            for key, items in (("tl_overwrite", over_new), ("tl_old_object", over_old)):
                with autocast(precision, device):
                    r = probe_accuracy(ctx.model, ctx.tokenizer, items, batch_size=cfg.eval_batch_size, prefix_fn=pf,
                                       device=device, exact_match=False)
                row[f"{key}_acc"] = r["acc"]
        patience = getattr(cfg, "patience", None)
        stop = early_stop([r for r in read_rows(metrics_path) if r["seed"] == seed and r["epoch"] < epoch] + [row],
                          epoch, patience, cfg.epochs) if patience else None  # the file: a resumed seed's earlier rows
        if stop:
            row["stopped"] = stop
        row["seconds"] = round(time.time() - t0, 2)
        row["precision"] = precision
        row.update(peak_memory(device))  # peak_mem_mib, and peak_mem_kind saying how it was measured
        rows.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        em = f" EM TL {row['tl_em']:.3f} NF {row['nf_em']:.3f}" if cfg.exact_match else ""
        loss = stats.get("train_loss")
        log(f"seed {seed} epoch {epoch:>2}: TL {row['tl_acc']:.3f} NF {row['nf_acc']:.3f} val {row['val_acc']:.3f}{em}"
            + (f" loss {loss:.3f}" if loss is not None else "") + f" ({row['seconds']:.0f}s)")
        if cfg.progress:  # TL not moving after the first epochs: say what to change (silent in meta-validations)
            warn_if_stalled(read_rows(metrics_path), epoch, cfg, ctx.model, seed)  # the file: a resumed seed has epoch 0
        if stop:
            log(f"seed {seed}: {stop} (--patience {patience}); training ends after epoch {epoch} of {cfg.epochs}")
        D.barrier(info)
        return D.all_reduce_flag(bool(stop), info)  # every rank stops, or none

    def save_state(tensors: dict, state: dict) -> None:
        if ckpt_dir is not None:
            save_checkpoint(ckpt_dir, tensors, {"seed": seed, "hash": cfg.hash(), **state})

    run_tasks(cfg, cfg.strategies, seed, [train_docs], device=device, old_corpus=old_corpus, on_probe=evaluate,
              probe="epoch", save=save_state, ckpt_every=getattr(cfg, "ckpt_every", None), resume=resume,
              info=info, strategies=strategies)
    return rows
