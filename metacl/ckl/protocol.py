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

Resuming: seeds whose every epoch is already in `metrics.jsonl` are not rerun; a seed cut off
half-way is rerun from scratch (its partial rows are dropped first). The seed list is not part
of the run's identity, so `--seeds 0 1 2` in the folder of a `--seeds 0` run only adds seeds 1
and 2; the summary covers exactly the seeds asked for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from metacl.ckl.config import CklConfig
from metacl.ckl.metrics import probe_accuracy
from metacl.ckl.optimizers import build_optimizer
from metacl.ckl.report import plot_runs, read_rows, summarize, table_markdown
from metacl.ckl.train import train_task
from metacl.errors import MetaclError
from metacl.strategies.base import Strategy, TrainContext, get_strategy
from metacl.utils import seed_everything, write_json_atomic


def carve_tl_val(tl: list, fraction: float = 0.1) -> tuple[list, list]:
    """(tl_test, tl_val): the items with the lowest SHA-1(uuid) form tl_val (at least one)."""
    k = max(1, math.ceil(fraction * len(tl)))
    if len(tl) - k < 1:
        raise MetaclError(f"TL has only {len(tl)} item(s); need at least 2 to hold some out as tl_val (or give --tl-val FILE)")
    ranked = sorted(range(len(tl)), key=lambda i: hashlib.sha1(str(tl[i].uuid).encode()).hexdigest())
    val_idx = set(ranked[:k])
    return [x for i, x in enumerate(tl) if i not in val_idx], [x for i, x in enumerate(tl) if i in val_idx]


def build_strategies(names: list[str], options: dict[str, Any]) -> list[Strategy]:
    ns = argparse.Namespace(**options)
    return [get_strategy(n).from_args(ns) for n in names]


def strategy_option_names(names: list[str]) -> list[str]:
    """The `dest` names of every option the given strategies declare in `add_args`."""
    dests: list[str] = []
    for n in names:
        p = argparse.ArgumentParser(add_help=False)
        get_strategy(n).add_args(p)
        dests += [a.dest for a in p._actions]
    return dests


def _prefix_fn(strategies: list[Strategy], ctx: TrainContext) -> Callable[[Any], str | None] | None:
    """Join every strategy's `probe_prefix` (in-context learning); None when no strategy defines one."""
    own = [s for s in strategies if type(s).probe_prefix is not Strategy.probe_prefix]
    if not own:
        return None

    def fn(item):
        parts = [p for p in (s.probe_prefix(ctx, item) for s in own) if p]
        return "\n".join(parts) if parts else None

    return fn


def _prepare_out(cfg: CklConfig) -> Path:
    out = Path(cfg.out)
    cfg_path = out / "config.json"
    if cfg_path.is_file():
        try:
            stored = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise MetaclError(f"{cfg_path} is corrupt ({e.msg}); delete the folder or choose another --out") from e
        if stored.get("hash") != cfg.hash():
            raise MetaclError(f"--out {out} holds a different run (config hash {stored.get('hash')} != {cfg.hash()}); "
                              "choose a new --out folder or delete the old one")
    elif out.is_dir() and any(out.iterdir()):
        raise MetaclError(f"--out {out} is not empty and holds no metacl run (no config.json); choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg_path, {"hash": cfg.hash(), "config": cfg.identity()})
    return out


def _completed(rows: list[dict], seed: int, last_epoch: int) -> bool:
    return {r["epoch"] for r in rows if r["seed"] == seed} >= set(range(last_epoch + 1))


def run_ckl(cfg: CklConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the protocol for every seed in `cfg.seeds`; returns the summary (also written to disk)."""
    from metacl.data.lama import load_ckl_data
    from metacl.models.loading import check_causal_lm_path, load_model_and_tokenizer
    from metacl.models.pretrain import read_corpus

    cfg.validate()
    for n in cfg.strategies:  # unknown names fail before anything is written
        get_strategy(n)
    check_causal_lm_path(cfg.model)  # so does a wrong --model
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
    old_corpus = read_corpus([cfg.old_corpus]) if cfg.old_corpus else list(data.old_corpus)

    out = _prepare_out(cfg)
    metrics_path = out / "metrics.jsonl"
    rows = read_rows(metrics_path)
    device = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trains = any(get_strategy(n).trains for n in cfg.strategies)
    last_epoch = cfg.epochs if trains else 0
    log(f"ckl run {'+'.join(cfg.strategies)}: TL {len(tl_test)} scored, TL_val {len(tl_val)} ({val_source}), "
        f"NF {len(nf)}, {len(train_docs)} training documents, old corpus {len(old_corpus)} docs, device {device}")

    for seed in cfg.seeds:
        if _completed(rows, seed, last_epoch):
            log(f"seed {seed}: already complete in {metrics_path}, skipped")
            continue
        rows = [r for r in rows if r["seed"] != seed]  # drop a half-finished seed, rerun it whole
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        rows += _run_seed(cfg, seed, device, tl_test, nf, tl_val, train_docs, old_corpus, trains, metrics_path, log,
                          load_model_and_tokenizer)

    wanted = set(cfg.seeds)  # the folder may hold more seeds from an earlier call; report the asked ones
    summ = summarize([r for r in rows if r["seed"] in wanted])
    name = "+".join(cfg.strategies)
    summary = {"name": name, "hash": cfg.hash(), "strategies": cfg.strategies, "model": cfg.model,
               "data": cfg.data or {"tl": cfg.tl, "nf": cfg.nf, "tl_val": cfg.tl_val},
               "n_tl": len(tl_test), "n_nf": len(nf), "n_tl_val": len(tl_val), "tl_val_source": val_source,
               "epochs": cfg.epochs, "optimizer": cfg.optimizer, "lr": cfg.lr, "device": str(device), **summ}
    write_json_atomic(out / "summary.json", summary)
    table = table_markdown([(name, summ)])
    (out / "table.md").write_text(table)
    plot_runs([(name, summ)], out / "plot.png")
    return summary


def _run_seed(cfg, seed, device, tl_test, nf, tl_val, train_docs, old_corpus, trains, metrics_path, log, loader):
    gen = seed_everything(seed)
    model, tok = loader(cfg.model, device=device)
    strategies = build_strategies(cfg.strategies, cfg.strategy_options)
    ctx = TrainContext(model=model, tokenizer=tok, device=device, train_docs=train_docs, old_corpus=old_corpus,
                       batch_size=cfg.batch_size, max_length=cfg.max_length, seed=seed, generator=gen)
    rows: list[dict] = []
    t0 = time.time()

    def evaluate(epoch: int, stats: dict) -> None:
        pf = _prefix_fn(strategies, ctx)
        row: dict[str, Any] = {"seed": seed, "epoch": epoch, **stats}
        for key, items in (("tl", tl_test), ("nf", nf), ("val", tl_val)):
            r = probe_accuracy(ctx.model, tok, items, batch_size=cfg.eval_batch_size, prefix_fn=pf, device=device,
                               exact_match=cfg.exact_match)
            row[f"{key}_acc"], row[f"{key}_em"] = r["acc"], r["em"]
            row[f"{key}_prompt_tokens"], row[f"{key}_seconds_per_query"] = r["prompt_tokens"], r["seconds_per_query"]
        row["seconds"] = round(time.time() - t0, 2)
        rows.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        em = f" EM TL {row['tl_em']:.3f} NF {row['nf_em']:.3f}" if cfg.exact_match else ""
        loss = stats.get("train_loss")
        log(f"seed {seed} epoch {epoch:>2}: TL {row['tl_acc']:.3f} NF {row['nf_acc']:.3f} val {row['val_acc']:.3f}{em}"
            + (f" loss {loss:.3f}" if loss is not None else "") + f" ({row['seconds']:.0f}s)")

    if not trains:  # in-context learning and other non-training methods: one evaluation
        for s in strategies:
            s.before_task(ctx)
        evaluate(0, {"train_loss": None, "skipped_steps": 0})
        for s in strategies:
            s.after_task(ctx)
        return rows
    evaluate(0, {"train_loss": None, "skipped_steps": 0})

    def make_opt(params):
        return build_optimizer(cfg.optimizer, params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               path=cfg.optimizer_path, total_steps=ctx.total_steps, learned_lr=cfg.learned_lr)

    train_task(ctx, strategies, cfg.epochs, make_opt, on_epoch_end=evaluate, grad_clip=cfg.grad_clip or None,
               progress=cfg.progress)
    return rows
