"""Build a RHO-1 reference LM for `--strategy rho1_ref`: the base LM fine-tuned on curated text.

RHO-1 scores each token by the excess loss of the model being trained over a *reference* trained
on high-quality data close to the target distribution. A generated world ships no such corpus, but
it has one that is in-distribution and disjoint from everything a CKL table scores: the evidence
documents of its meta-training split (meta_train + meta_val: other facts, the same templates and
distractor sentences as the TL documents, no TL / tl_val / NF fact among them). The reference is
the base LM fine-tuned on those, so it shares the tokenizer by construction; it knows the shape of
a document but none of the facts a run must learn, which is what RHO-1's reference is for.

    python experiments/rho1_reference.py --model runs/w2/lm_small_s0 \
        --docs runs/w2/world_e200_d3-5/meta_train.jsonl runs/w2/world_e200_d3-5/meta_val.jsonl \
        --out runs/w2/rho1_ref_meta
    metacl ckl run ... --strategy rho1_ref --rho1-ref-model runs/w2/rho1_ref_meta

Writes OUT (save_pretrained: safetensors + tokenizer) and OUT/reference.json (the command, the
documents' sha256, the per-epoch loss), into OUT.tmp first and renamed when complete.
"""
import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

import torch

from metacl.core.batching import doc_batches
from metacl.data.lama import load_lama_jsonl
from metacl.engine.losses import lm_loss
from metacl.errors import MetaclError
from metacl.models.loading import load_model_and_tokenizer, quiet_hf_saving
from metacl.utils import seed_everything, write_json_atomic


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the base LM folder (the reference starts from it)")
    ap.add_argument("--docs", nargs="+", required=True, help="LAMA-ckl JSONL files whose evidence is the curated text")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = Path(a.out)
    if out.exists():
        raise MetaclError(f"--out {out} exists; remove it or pick another folder (a reference is never overwritten)")
    docs = [it.evidence for f in a.docs for it in load_lama_jsonl(f)]
    if not docs:
        raise MetaclError(f"--docs {' '.join(a.docs)}: no documents; pass LAMA-ckl JSONL files with `evidence`")
    gen = seed_everything(a.seed)
    model, tok = load_model_and_tokenizer(a.model, device="cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    losses = []
    t0 = time.time()
    model.train()
    for epoch in range(1, a.epochs + 1):
        order = torch.randperm(len(docs), generator=gen).tolist()
        total, n = 0.0, 0
        for batch in doc_batches(tok, [docs[i] for i in order], a.batch_size, a.max_length, "cpu"):
            loss = lm_loss(model, {}, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()), n + 1
        losses.append(total / max(n, 1))
        print(f"epoch {epoch}/{a.epochs}: loss {losses[-1]:.4f}", flush=True)
    model.eval()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_hf_saving():
        model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    sha = hashlib.sha256("\n".join(docs).encode()).hexdigest()
    write_json_atomic(tmp / "reference.json", {
        "command": "python experiments/rho1_reference.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "base_model": a.model, "docs": a.docs, "n_docs": len(docs), "docs_sha256": sha, "epochs": a.epochs,
        "lr": a.lr, "batch_size": a.batch_size, "max_length": a.max_length, "seed": a.seed,
        "epoch_loss": losses, "seconds": round(time.time() - t0, 2), "torch": torch.__version__})
    tmp.rename(out)
    print(f"wrote the reference LM to {out} ({len(docs)} documents, {a.epochs} epochs, final loss {losses[-1]:.4f})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MetaclError as e:
        print(f"rho1_reference: error: {e}", file=sys.stderr)
        sys.exit(2)
