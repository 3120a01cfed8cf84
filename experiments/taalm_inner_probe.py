"""Does an inner loop of K steps on a document teach its fact? Query-object NLL before/after.

Used to pick the inner optimizer for token-weighting meta-training (docs/results/taalm.md):
N meta_train examples (default 8), uniform token weights, first-order (no meta-gradient needed
here). A meta-gradient through the inner loop can only carry signal if the update actually
lowers the query NLL, so this is the cheap check to run before any meta-training.
    OMP_NUM_THREADS=1 python experiments/taalm_inner_probe.py runs/taalm/base_lm runs/taalm/world
    OMP_NUM_THREADS=1 python experiments/taalm_inner_probe.py runs/official/base_lm runs/taalm/world \
        --grid adamw:1e-3:2,adamw:1e-2:4 --n 16 --max-length 256 [--lora --lora-rank 4]
Each grid entry is OPTIMIZER:LR:K. Prints one line per entry (mean query NLL over the examples
and how many examples improved), and with --json also writes them to a file.
"""
import argparse
import json

from metacl.data.lama import load_lama_jsonl
from metacl.engine import adamw, lm_loss, sgd, unroll
from metacl.meta.train_token_weighting import add_lora, encode_document, encode_probe, examples_from_items, inner_params, pad
from metacl.models.loading import load_model_and_tokenizer

DEFAULT_GRID = "sgd:0.05:2,sgd:0.3:2,sgd:1.0:2,adamw:1e-3:2,adamw:1e-3:4,sgd:0.3:4"

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("model")
ap.add_argument("world")
ap.add_argument("--grid", default=DEFAULT_GRID, help="comma-separated OPTIMIZER:LR:K entries")
ap.add_argument("--n", type=int, default=8, help="meta_train examples (the first N)")
ap.add_argument("--max-length", type=int, default=256)
ap.add_argument("--lora", action="store_true", help="inner loop updates LoRA adapters only")
ap.add_argument("--lora-rank", type=int, default=4)
ap.add_argument("--json", help="also write the results here")
args = ap.parse_args()

model, tok = load_model_and_tokenizer(args.model)
if args.lora:
    model = add_lora(model, args.lora_rank, 0)
for p in model.parameters():
    p.requires_grad_(False)
ex = examples_from_items(load_lama_jsonl(f"{args.world}/meta_train.jsonl"))[: args.n]
params = inner_params(model, "lora" if args.lora else "full")
docs = pad([encode_document(tok, e.document, args.max_length) for e in ex], tok.pad_token_id)
qs = [pad([encode_probe(tok, e.prefix, e.object)], tok.pad_token_id) for e in ex]
before = [float(lm_loss(model, params, q)) for q in qs]
rows = [{"setting": "before", "mean_nll": sum(before) / len(ex)}]
print(f"before  mean query NLL {rows[0]['mean_nll']:.3f}  ({len(ex)} examples)", flush=True)
for entry in args.grid.split(","):
    name, lr, k = entry.split(":")
    opt = {"adamw": adamw, "sgd": sgd}[name](lr=float(lr))
    inner = {key: v[:, None] for key, v in docs.items()}
    pK, _ = unroll(model, params, lambda m, p, b: lm_loss(m, p, b), [inner] * int(k), optimizer=opt,
                   first_order=True, per_example=True)
    after = [float(lm_loss(model, {key: v[i] for key, v in pK.items()}, qs[i])) for i in range(len(ex))]
    row = {"setting": entry, "mean_nll": sum(after) / len(ex),
           "mean_drop": sum(b - a for b, a in zip(before, after)) / len(ex),
           "improved": sum(a < b for b, a in zip(before, after)), "min_nll": min(after), "max_nll": max(after)}
    rows.append(row)
    print(f"{entry:14s} mean {row['mean_nll']:.3f}  drop {row['mean_drop']:+.3f}  improved {row['improved']}/{len(ex)}"
          f"  range {row['min_nll']:.2f}-{row['max_nll']:.2f}", flush=True)
if args.json:
    with open(args.json, "w") as f:
        json.dump({"model": args.model, "world": args.world, "n": len(ex), "lora": args.lora,
                   "max_length": args.max_length, "rows": rows}, f, indent=1)
