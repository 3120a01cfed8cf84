"""Does an inner loop of K steps on a document teach its fact? Query-object NLL before/after.

Used to pick the inner optimizer for token-weighting meta-training (docs/results/taalm.md):
8 meta_train examples, uniform token weights, first-order (no meta-gradient needed here).
    OMP_NUM_THREADS=1 python experiments/taalm_inner_probe.py runs/taalm/base_lm runs/taalm/world
"""
import sys

from metacl.data.lama import load_lama_jsonl
from metacl.engine import adamw, lm_loss, sgd, unroll
from metacl.meta.train_token_weighting import encode_document, encode_probe, examples_from_items, pad
from metacl.models.loading import load_model_and_tokenizer

model, tok = load_model_and_tokenizer(sys.argv[1])
for p in model.parameters():
    p.requires_grad_(False)
ex = examples_from_items(load_lama_jsonl(f"{sys.argv[2]}/meta_train.jsonl"))[:8]
params = {n: p.detach() for n, p in model.named_parameters()}
docs = pad([encode_document(tok, e.document, 256) for e in ex], tok.pad_token_id)
qs = [pad([encode_probe(tok, e.prefix, e.object)], tok.pad_token_id) for e in ex]
print("before", sum(float(lm_loss(model, params, q)) for q in qs) / len(ex))
for name, opt, K in [("sgd0.05", sgd(lr=0.05), 2), ("sgd0.3", sgd(lr=0.3), 2), ("sgd1", sgd(lr=1.0), 2),
                     ("adamw1e-3", adamw(lr=1e-3), 2), ("adamw1e-3 K4", adamw(lr=1e-3), 4), ("sgd0.3 K4", sgd(lr=0.3), 4)]:
    inner = {k: v[:, None] for k, v in docs.items()}
    pK, _ = unroll(model, params, lambda m, p, b: lm_loss(m, p, b), [inner] * K, optimizer=opt,
                   first_order=True, per_example=True)
    print(name, sum(float(lm_loss(model, {k: v[i] for k, v in pK.items()}, qs[i])) for i in range(len(ex))) / len(ex),
          flush=True)
