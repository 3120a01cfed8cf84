"""How much weight does a token weighter put on the fact's object vs the rest of the document?

Reads held-out documents (default: WORLD/meta_val.jsonl) and reports, over all of them, the mean
weight on the object's tokens (located as the `oracle` strategy does), the mean weight on every
other token, and their ratio. Usage:
    python experiments/taalm_weight_stats.py WORLD PREDICTOR [PREDICTOR ...] [--json OUT]
"""
import argparse
import json
import sys

import torch

from metacl.data.lama import load_lama_jsonl
from metacl.meta.token_weighting import TokenWeighter
from metacl.strategies.oracle_weights import object_token_mask
from metacl.utils import write_json_atomic


def stats(tw, items):
    tok = tw.tokenizer
    on, off = [], []
    with torch.no_grad():
        for it in items:
            ids = tok(it.evidence)["input_ids"]
            w = tw(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0].tolist()
            mask = object_token_mask(ids, it.evidence, it.object, tok)
            for t in range(1, len(ids)):
                (on if mask[t] else off).append(w[t])
    mo, mf = sum(on) / len(on), sum(off) / len(off)
    return {"object_mean": mo, "other_mean": mf, "ratio": mo / mf, "object_tokens": len(on), "other_tokens": len(off),
            "object_share": sum(on) / (sum(on) + sum(off)),  # the share of the weight mass on the objects
            "mean": (sum(on) + sum(off)) / (len(on) + len(off))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("world")
    ap.add_argument("predictors", nargs="+")
    ap.add_argument("--split", default="meta_val")
    ap.add_argument("--json")
    a = ap.parse_args()
    items = load_lama_jsonl(f"{a.world}/{a.split}.jsonl")
    res = {}
    for p in a.predictors:
        res[p] = stats(TokenWeighter.from_pretrained(p), items)
        print(p, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res[p].items()}), flush=True)
    if a.json:
        write_json_atomic(a.json, res)


if __name__ == "__main__":
    sys.exit(main())
