"""Does a locally pretrained base LM know its old world? (evidence for docs/results/base_lm.md)

Two settings, each: pretrain a tokenizer + Llama LM from scratch, then score probes with the
official teacher-forced metric (`metacl.core.probes.probe_accuracy`: fraction of object tokens
whose argmax is right, averaged over items) and greedy exact match.

    # generated world: pretrain on pretrain_corpus.jsonl; NF should be >= 0.9, TL ~ 0
    OMP_NUM_THREADS=1 python experiments/base_lm.py world --entities 200 --seed 0 --size small
    # official LAMA-ckl files: pretrain on NF evidence (+ the NF fact sentences), never on TL
    OMP_NUM_THREADS=1 python experiments/base_lm.py official --data ../shared/data/lama_ckl --size small

Writes the model to --out and a JSON summary to --json (default docs/results/base_lm_<mode>.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from metacl.core.probes import probe_accuracy
from metacl.data.lama import load_ckl_data, load_lama_jsonl
from metacl.data.world import write_world
from metacl.models.loading import load_model_and_tokenizer
from metacl.models.pretrain import pretrain
from metacl.utils import write_json_atomic


def score(model, tok, items, name):
    t = time.time()
    r = probe_accuracy(model, tok, items, batch_size=64, exact_match=True)
    print(f"{name}: acc {r['acc']:.3f} em {r['em']:.3f} (n={r['n']}, {time.time() - t:.1f}s)", flush=True)
    return {"acc": r["acc"], "em": r["em"], "n": r["n"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["world", "official"])
    ap.add_argument("--entities", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="small")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--data", default="../shared/data/lama_ckl")
    ap.add_argument("--no-fact-sentences", action="store_true",
                    help="official mode: pretrain on NF evidence only (not the NF probe sentences)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    out = Path(a.out or f"/tmp/metacl_runs/base_lm_{a.mode}_{a.size}_s{a.seed}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = {"mode": a.mode, "size": a.size, "seed": a.seed, "torch_threads": torch.get_num_threads(),
              "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
              "command": "OMP_NUM_THREADS=1 python experiments/base_lm.py " + " ".join(
                  f"{k} {v}" for k, v in [("", a.mode), ("--entities", a.entities if a.mode == "world" else None),
                                          ("--seed", a.seed), ("--size", a.size), ("--steps", a.steps),
                                          ("--batch-tokens", a.batch_tokens), ("--epochs", a.epochs), ("--lr", a.lr)] if v is not None).strip()
              + (" --no-fact-sentences" if a.no_fact_sentences else "")}
    if a.mode == "world":
        world = out / "world"
        meta = write_world(world, a.entities, a.seed)
        result["world_counts"] = meta["counts"]
        corpus = [world / "pretrain_corpus.jsonl"]
        data = load_ckl_data(world)
        probes = {"nf": data.nf, "tl": data.tl, "tl_val": data.tl_val,
                  "meta_nf": load_lama_jsonl(world / "meta_nf.jsonl")}
    else:
        data = load_ckl_data(a.data)
        # The NF evidence documents, plus (unless disabled) each NF fact stated once as a plain
        # sentence: a 7B model met these facts many times in many forms; our small LM gets two.
        corpus_file = out / "official_nf_corpus.jsonl"
        with open(corpus_file, "w") as f:
            for it in data.nf:
                f.write(json.dumps({"text": it.evidence}) + "\n")
                if not a.no_fact_sentences:
                    f.write(json.dumps({"text": it.task_descriptive}) + "\n")
        corpus = [corpus_file]
        result["corpus"] = "NF evidence" + ("" if a.no_fact_sentences else " + NF fact sentences (task_descriptive)")
        probes = {"nf": data.nf, "tl": data.tl}
    summary = pretrain(corpus, a.size, out / "model", seed=a.seed, steps=a.steps, batch_tokens=a.batch_tokens, lr=a.lr,
                       epochs=a.epochs, device="cpu")
    result["pretrain"] = {k: summary[k] for k in ("parameters", "vocab_size", "documents", "tokens", "final_loss",
                                                  "seconds", "preset", "epochs")}
    model, tok = load_model_and_tokenizer(out / "model", device="cpu")
    result["probes"] = {name: score(model, tok, items, name) for name, items in probes.items()}
    result["total_seconds"] = round(time.time() - t0, 1)
    path = Path(a.json or f"docs/results/base_lm_{a.mode}.json")
    write_json_atomic(path, result)
    print(json.dumps(result["probes"]), f"pretrain {summary['seconds']:.0f}s, total {result['total_seconds']}s -> {path}")


if __name__ == "__main__":
    main()
