"""`metacl meta-train token-weighting`: meta-train a TAALM-style token weighter on a world folder.

    metacl meta-train token-weighting --model runs/base_lm --data runs/world --out runs/tw \\
        --inner-steps 2 --meta-batch 4 --steps 200 --val-every 50 [--retention 1.0] [--lora] [--resume]

Reads `meta_train.jsonl` (documents + queries to learn from), `meta_val.jsonl` (held-out
documents + probes for validation) and `meta_nf.jsonl` (old facts: the retention term and the
validation's NF probes) from `--data`. Your own data instead: `--data PAIRS.jsonl --nf OLD.jsonl`
(LAMA-ckl schema); the pairs are split into meta-train / meta-val by a hash of each row's uuid
(`--val-fraction`, default 0.2) and the split is written to OUT/data/. Writes `OUT/best` (the weighter to deploy with
`metacl ckl run --strategy taalm --taalm-predictor OUT/best`), `OUT/last`, `OUT/checkpoint`,
`OUT/metrics.jsonl` and `OUT/summary.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from metacl.precision import PRECISIONS


def register(sub) -> None:
    p = sub.add_parser("token-weighting", help="meta-train a token-importance predictor (TAALM-style)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="base LM folder (any local HF causal LM)")
    p.add_argument("--data", required=True,
                   help="world folder with meta_train/meta_val/meta_nf .jsonl (`metacl data world`), or your own "
                        "LAMA-schema JSONL of (evidence, probe) pairs, split into meta-train/meta-val by hash of uuid")
    p.add_argument("--nf", default=None, metavar="FILE",
                   help="old facts (LAMA-schema JSONL) for the retention term and validation NF; required with a pairs "
                        "file, replaces DATA/meta_nf.jsonl with a folder")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="with a pairs file: fraction of uuids held out as meta-val (default 0.2)")
    p.add_argument("--out", required=True, help="output folder (best/, last/, checkpoint/, metrics.jsonl)")
    p.add_argument("--backbone", default=None,
                   help="weighter backbone: a local HF causal LM sharing the base LM's tokenizer (default: a copy of --model)")
    p.add_argument("--inner-steps", type=int, default=2, help="K differentiated inner steps (default 2; see docs/results/taalm.md)")
    p.add_argument("--inner-lr", type=float, default=1e-3,
                   help="learning rate of the differentiated inner updates of the base LM (default 1e-3)")
    p.add_argument("--inner-optimizer", choices=["adamw", "sgd"], default="adamw",
                   help="functional optimizer of the inner loop, as the deployed `ckl run` uses (default adamw)")
    p.add_argument("--truncate", type=int, default=None, help="backprop through only the last N inner steps")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--lora", dest="mode", action="store_const", const="lora", help="inner loop updates LoRA adapters only")
    g.add_argument("--full", dest="mode", action="store_const", const="full", help="inner loop updates all base-LM parameters (default)")
    p.set_defaults(mode="full")
    p.add_argument("--lora-rank", type=int, default=4, help="rank of the inner-loop LoRA adapters with --lora (default 4)")
    p.add_argument("--retention", type=float, default=0.0, metavar="LAMBDA",
                   help="weight of the old-fact probe NLL after the update (0 = TAALM's objective)")
    p.add_argument("--retention-probes", type=int, default=4, help="old-fact probes per meta-example")
    p.add_argument("--meta-batch", type=int, default=4, help="meta-examples per meta-step, batched")
    p.add_argument("--steps", type=int, default=100, help="meta-steps: outer updates of the token weighter (default 100)")
    p.add_argument("--outer-lr", type=float, default=3e-4, help="AdamW learning rate of the token weighter (default 3e-4)")
    p.add_argument("--max-length", type=int, default=128,
                   help="tokens per document window, inner loop and validation runs (default 128)")
    p.add_argument("--val-every", type=int, default=50, help="run the CKL protocol on meta_val every N steps and at the last step (0: never)")
    p.add_argument("--val-epochs", type=int, default=3, help="CKL epochs per validation")
    p.add_argument("--val-items", type=int, default=32, help="meta_val documents (and as many NF probes) per validation")
    p.add_argument("--skip-initial-val", action="store_true", help="do not validate the untrained weighter at step 0")
    p.add_argument("--val-lr", type=float, default=None, help="CKL learning rate in validation (default: the CKL default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the meta-example order, LoRA init and validation runs (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint (same options)")
    p.add_argument("--ckpt-every", type=int, default=None,
                   help="checkpoint every N meta-steps (default: at each validation and every min(val-every, 25))")
    p.add_argument("--max-bad-steps", type=int, default=10,
                   help="stop after this many meta-steps skipped for a non-finite loss or gradient")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: autocast the forward passes (fp32 master weights; attention stays eager/math)")
    p.add_argument("--compile", action="store_true",
                   help="run the inner loop and probe losses as one torch.compile'd function: the same meta-gradient, "
                        "~1.7x faster meta-steps on CPU after a one-off compile (1-2 min; needs a C++ compiler)")
    from metacl.meta import options

    options.add_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from metacl.errors import MetaclError
    from metacl.meta.token_weighting import TokenWeighter
    from metacl.meta.train_token_weighting import MetaConfig, MetaTrainer, examples_from_items
    from metacl.models.loading import load_model_and_tokenizer
    from metacl.utils import default_device, seed_everything, write_json_atomic

    data = Path(args.data)
    for name in ("inner_steps", "meta_batch", "steps", "max_length"):
        if getattr(args, name) < 1:
            raise MetaclError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}; pass a positive count (see metacl meta-train token-weighting --help)")
    if args.retention < 0:
        raise MetaclError(f"--retention {args.retention} is negative; pass 0 (off) or a positive lambda")
    for name in ("inner_lr", "outer_lr"):  # bad input is refused before --out is touched (H6)
        if not getattr(args, name) > 0:
            raise MetaclError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    from metacl.meta import options

    options.check(MetaConfig(**options.config_kwargs(args)))

    from metacl.models.context import fit_max_length
    from metacl.models.loading import check_causal_lm_path
    from metacl.utils import check_out_kind

    args.max_length = fit_max_length(check_causal_lm_path(args.model), args.max_length)  # clamp to the model's context
    check_out_kind(args.out, "meta-train token-weighting")
    from metacl.meta.user_data import resolve_meta_data

    meta_data = resolve_meta_data(data, args.nf, args.val_fraction, args.out)  # a pairs file is split here
    files = meta_data.files
    device = default_device(args.device)
    from metacl import distributed

    dist_info = distributed.init(str(device))  # under torchrun: one GPU per process
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
    seed_everything(args.seed)
    model, tok = load_model_and_tokenizer(args.model, device=device)
    train_items, val_items, nf_items = meta_data.train, meta_data.val, meta_data.nf
    from metacl.core.probes import split_probe

    nf_probes = [split_probe(it) for it in nf_items]
    cfg = MetaConfig(inner_steps=args.inner_steps, inner_lr=args.inner_lr, inner_optimizer=args.inner_optimizer,
                     mode=args.mode, lora_rank=args.lora_rank, truncate=args.truncate, retention=args.retention,
                     retention_probes=args.retention_probes, meta_batch=args.meta_batch, outer_lr=args.outer_lr,
                     max_length=args.max_length, seed=args.seed, steps=args.steps, val_every=args.val_every,
                     val_at_start=not args.skip_initial_val, ckpt_every=args.ckpt_every,
                     max_bad_steps=args.max_bad_steps, precision=args.precision, compile=args.compile,
                     **options.config_kwargs(args),
                     extra={"model": str(args.model), "data": str(data), "backbone": args.backbone})
    weighter = None
    if args.backbone:
        weighter = TokenWeighter.from_model_path(args.backbone, tok, **options.head_kwargs(cfg)).to(device)
    validate = None
    if args.val_every > 0 and val_items:
        validate = make_ckl_validator(args.model, files["meta_val"], files["meta_nf"], Path(args.out) / "val",
                                      epochs=args.val_epochs, seed=args.seed, device=device, max_items=args.val_items,
                                      lr=args.val_lr, max_length=args.max_length)
    trainer = MetaTrainer(model, tok, examples_from_items(train_items), args.out, cfg, nf_probes,
                          weighter=weighter, validate=validate)
    from metacl.checkpoint import find_checkpoint

    if dist_info.is_main and (args.resume or find_checkpoint(Path(args.out) / "checkpoint") is None):
        meta_data.write()  # the split of a pairs file, in OUT/data/ (the validator reads it); never over another run's
    distributed.barrier(dist_info)
    res = trainer.run(resume=args.resume)
    if not dist_info.is_main:  # rank 0 reports and writes
        return 0
    write_json_atomic(Path(args.out) / "summary.json", {"config": {**vars(args), "func": None}, **res})
    for w in res.get("warnings", []):
        print(f"metacl: warning: {w}", file=sys.stderr, flush=True)
    best = res.get("best") or {}
    print(f"meta-trained {res['step']} steps in {res['seconds']:.0f}s; best weighter: {Path(args.out) / 'best'}"
          + (f" (val step {best.get('step')}, score {best.get('score'):.3f})" if best else ""))
    return 0


def make_ckl_validator(model_path, tl_file, nf_file, out_dir, epochs: int, seed: int, device, max_items: int,
                       lr: float | None = None, max_length: int = 128):
    """A `validate(weighter, path)` that runs the real CKL protocol with `--strategy taalm` on held-out facts.

    TL = the meta_val documents and probes, NF = old-fact probes (first `max_items` of each).
    Score = TL Top Acc + NF acc at that epoch (TAALM's "total knowledge"), so a weighter that
    learns faster by forgetting more does not win. Each validation writes its own CKL run folder
    under OUT/val/ (the plot and metrics of every validation stay inspectable).
    """
    from metacl.ckl.config import CklConfig
    from metacl.ckl.protocol import run_ckl

    from metacl import distributed

    def validate(weighter, path):
        is_main = distributed.init().is_main  # under torchrun every rank runs the (data-parallel) CKL protocol
        step = json.loads((Path(path) / "token_weighter.json").read_text()).get("meta_step", 0)
        out = Path(out_dir) / f"step_{int(step):06d}"
        if out.exists() and is_main:  # a validation cut off by a crash: redo it from scratch
            shutil.rmtree(out)
        cfg = CklConfig(model=str(model_path), out=str(out), tl=str(tl_file), nf=str(nf_file),
                        strategies=["taalm"], strategy_options={"taalm_predictor": str(path)}, epochs=epochs,
                        seeds=[seed], max_items=max_items, max_length=max_length, exact_match=False,
                        device=str(device), progress=False, **({"lr": lr} if lr is not None else {}))
        res = run_ckl(cfg, log=lambda msg: None)
        return ckl_score(res) if is_main else {}

    return validate


def ckl_score(summary: dict) -> dict:
    """Top Acc (best TL epoch), NF at that epoch and their sum, from a run_ckl summary."""
    paper = summary["aggregate"]["paper"]
    top, nf = float(paper["tl_acc"]["mean"]), float(paper["nf_acc"]["mean"])
    return {"score": top + nf, "top_acc": top, "nf_at_top": nf, "top_epoch": float(paper["epoch"]["mean"])}


def demo_meta_train(model_path, world_dir, out_dir, seed: int = 0, steps: int = 30, inner_steps: int = 2,
                    inner_optimizer: str = "adamw", inner_lr: float = 1e-3, outer_lr: float = 3e-3,
                    meta_batch: int = 4, max_length: int = 256) -> Path:
    """The `metacl demo` step: a short meta-training run without validation; returns OUT/best.

    Kept to a few minutes on a CPU (the demo's budget); the defaults are the configuration chosen
    in docs/results/taalm.md. Resumes from OUT/checkpoint when the demo is rerun.
    """
    import torch

    from metacl.core.probes import split_probe
    from metacl.data.lama import load_lama_jsonl
    from metacl.meta.train_token_weighting import MetaConfig, MetaTrainer, examples_from_items
    from metacl.models.loading import load_model_and_tokenizer

    world = Path(world_dir)
    model, tok = load_model_and_tokenizer(model_path, device=torch.device("cpu"))
    cfg = MetaConfig(inner_steps=inner_steps, inner_optimizer=inner_optimizer, inner_lr=inner_lr, outer_lr=outer_lr,
                     meta_batch=meta_batch, steps=steps, val_every=0, seed=seed, max_length=max_length)
    nf = [split_probe(it) for it in load_lama_jsonl(world / "meta_nf.jsonl")]
    trainer = MetaTrainer(model, tok, examples_from_items(load_lama_jsonl(world / "meta_train.jsonl")), out_dir,
                          cfg, nf)
    trainer.run(resume=(Path(out_dir) / "checkpoint").exists())
    return Path(out_dir) / "best"
