"""Which tokens rho1_ref's first selection keeps on the TL documents, against the answer tokens.

At the first step of a run the model is the base LM, so the excess loss is nll(base) - nll(reference).
This scores every TL + tl_val document in training batches (the run's order is irrelevant to the
statistic's meaning, so documents are taken in file order), keeps the top RATIO of each batch's target
tokens as `rho1_ref` does (metacl.strategies.rho1.select_top_excess), and reports how many of the
fact's object tokens (metacl.core.answer_spans.object_token_mask, the oracle's definition) are kept.

    python experiments/rho1_selection_stats.py --model runs/w2/lm_small_s0 --reference runs/w2/rho1_ref_meta \
        --data runs/w2/world_e200_d3-5 --ratio 0.6 --json docs/results/baselines_v2_rho1_ref_table/selection.json
"""
import argparse
from pathlib import Path

import torch

from metacl.core.answer_spans import object_token_mask
from metacl.core.batching import tokenize_docs
from metacl.data.lama import load_lama_jsonl
from metacl.engine.losses import label_mask, token_nll
from metacl.models.loading import load_model_and_tokenizer
from metacl.strategies.rho1 import select_top_excess
from metacl.utils import write_json_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--data", required=True, help="world folder with tl.jsonl and tl_val.jsonl")
    ap.add_argument("--ratio", type=float, default=0.6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    items = [it for f in ("tl.jsonl", "tl_val.jsonl") for it in load_lama_jsonl(Path(a.data) / f)]
    model, tok = load_model_and_tokenizer(a.model, device="cpu")
    ref, _ = load_model_and_tokenizer(a.reference, device="cpu")
    kept = total = obj_kept = obj_total = 0
    excess_obj, excess_other = [], []
    with torch.no_grad():
        for i in range(0, len(items), a.batch_size):
            group = items[i:i + a.batch_size]
            batch = tokenize_docs(tok, [it.evidence for it in group], a.max_length)
            excess = token_nll(model, batch) - token_nll(ref, batch)
            mask = label_mask(batch)
            w = select_top_excess(excess, mask, a.ratio)
            obj = torch.zeros_like(mask)
            for r, it in enumerate(group):
                ids = batch["input_ids"][r].tolist()
                obj[r] = torch.tensor(object_token_mask(ids, it.evidence, it.object, tok), dtype=obj.dtype)
            obj = obj * mask
            kept += int(w.sum()); total += int(mask.sum())
            obj_kept += int((w * obj).sum()); obj_total += int(obj.sum())
            excess_obj += excess[obj > 0].tolist(); excess_other += excess[(mask > 0) & (obj == 0)].tolist()
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    out = {"documents": len(items), "ratio": a.ratio, "target_tokens": total, "kept_tokens": kept,
           "object_tokens": obj_total, "object_tokens_kept": obj_kept,
           "object_recall": obj_kept / max(obj_total, 1), "kept_fraction": kept / max(total, 1),
           "mean_excess_object": mean(excess_obj), "mean_excess_other": mean(excess_other),
           "model": a.model, "reference": a.reference, "data": a.data}
    write_json_atomic(a.json, out)
    print(f"kept {kept}/{total} target tokens ({out['kept_fraction']:.2f}); object tokens kept {obj_kept}/{obj_total} "
          f"({out['object_recall']:.2f}); mean excess: object {out['mean_excess_object']:.3f}, "
          f"other {out['mean_excess_other']:.3f}")


if __name__ == "__main__":
    main()
