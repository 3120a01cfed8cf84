"""How smooth is the token-weighting meta-objective? Analytic vs finite-difference meta-gradients.

Why: logged meta-gradient norms of the AdamW inner loop range over five orders of magnitude
(issue 19). AdamW's step `lr * m / (sqrt(v) + eps)` has a derivative up to `lr / eps` in the
inner gradient near 0, so the meta-objective may be smooth only on a tiny scale. This script
measures it on the planted-key toy of the tests (a tiny random Llama, 2 documents with
'key <value>' and their queries, retention 0.5 on 4 probes), in float64 everywhere (HF Llama's
float32 softmax and RMSNorm patched, as in tests/test_token_weighting_production.py): for each
inner loop, the directional derivative along one random direction of the weighter's parameters,
analytic (backward through the inner loop) and central finite differences at steps 1e-2 .. 1e-9.
A few seconds on a CPU.

    OMP_NUM_THREADS=1 python experiments/taalm_meta_smoothness.py --json docs/results/taalm_meta_smoothness.json
"""
import argparse
import json
import random
import tempfile

import torch
import torch.nn.functional as F
from transformers.models.llama import modeling_llama

from metacl.meta.token_weighting import TokenWeighter
from metacl.meta.train_token_weighting import MetaConfig, MetaExample, meta_objective
from metacl.models.loading import load_model_and_tokenizer
from metacl.models.pretrain import tiny_model_for_tests

FILL = "apple river stone cloud paper window garden silver candle forest music honey summer ladder rocket".split()
VALS = "red blue green black white pink gold gray".split()
LOOPS = {"adamw lr 1e-3 K 2 (default)": dict(), "sgd lr 0.5 K 2": dict(inner_optimizer="sgd", inner_lr=0.5),
         "adamw lr 1e-2 K 4": dict(inner_lr=1e-2, inner_steps=4)}
STEPS = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9]

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--json", help="write the results here")
args = ap.parse_args()
torch.set_num_threads(1)
_softmax = F.softmax
F.softmax = lambda x, dim=None, _stacklevel=3, dtype=None: _softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype)
modeling_llama.LlamaRMSNorm.forward = lambda self, h: self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

texts = [" ".join(random.Random(i).sample(FILL + VALS + ["key"], 24)) for i in range(30)]
path = tiny_model_for_tests(tempfile.mkdtemp(), texts=texts, vocab_size=360)
model, tok = load_model_and_tokenizer(path)
model = model.double()
for p in model.parameters():
    p.requires_grad_(False)
rng = random.Random(0)
ex = []
for _ in range(2):
    f, v = rng.sample(FILL, 8), rng.choice(VALS)
    i = rng.randrange(1, 7)
    ex.append(MetaExample(" ".join(f[:i] + ["key", v] + f[i:]) + ".", "key", v))
probes = [("key", "red"), ("key", "blue"), ("apple", "river"), ("stone", "cloud")]
results = {}
for name, opts in LOOPS.items():
    torch.manual_seed(0)
    tw = TokenWeighter.from_base_lm(model, tok).double()
    with torch.no_grad():  # away from the saturated start so every parameter matters
        tw.head.weight.normal_(0, 0.3)
        tw.head.bias.zero_()
    cfg = MetaConfig(retention=0.5, retention_probes=2, meta_batch=2, max_length=32, **opts)
    loss = lambda: meta_objective(tw, model, tok, ex, cfg, probes)["loss"]
    tw.zero_grad()
    loss().backward()
    g = torch.Generator().manual_seed(1)
    d = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in tw.named_parameters()}
    analytic = float(sum((p.grad * d[n]).sum() for n, p in tw.named_parameters()))
    grad_norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in tw.parameters())))
    fd = {}
    with torch.no_grad():
        for eps in STEPS:
            vals = []
            for sign in (1, -1):
                for n, p in tw.named_parameters():
                    p.add_(sign * eps * d[n])
                vals.append(float(loss()))
                for n, p in tw.named_parameters():
                    p.sub_(sign * eps * d[n])
            fd[f"{eps:g}"] = (vals[0] - vals[1]) / (2 * eps)
    d_norm = float(torch.sqrt(sum((v ** 2).sum() for v in d.values())))
    results[name] = {"analytic": analytic, "meta_grad_norm": grad_norm, "direction_norm": d_norm, "finite_difference": fd,
                     "rel_error": {k: abs(v - analytic) / abs(analytic) for k, v in fd.items()}}
    print(name, f"analytic {analytic:.6g}  |grad| {grad_norm:.3g}  " +
          "  ".join(f"{k}: {v:.4g}" for k, v in fd.items()))
if args.json:
    from metacl.utils import write_json_atomic

    write_json_atomic(args.json, {"command": "python experiments/taalm_meta_smoothness.py", "loops": results})
