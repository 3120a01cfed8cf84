"""`metacl data world`: write a generated fictional world (LAMA-ckl schema) to a folder."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("data", help="generate data sets (metacl data world)")
    subsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    w = subsub.add_parser("world", help="generate a fictional world: pretrain corpus, NF/TL/TL_val and meta splits")
    w.add_argument("--entities", type=int, default=200, help="number of people (default 200: ~100 TL facts)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", required=True, help="output folder")
    w.add_argument("--overwrite-fraction", type=float, default=0.4,
                   help="share of new facts that replace an old employer or city (default 0.4)")
    w.add_argument("--version", type=int, choices=[1, 2], default=2,
                   help="2 (default): held-out probe phrasings, official-like TL documents; 1: the old world "
                        "(probes verbatim in training text), for reproducing old results")
    w.add_argument("--paraphrases", type=int, default=4,
                   help="phrasings per old fact, 1-4 (default 4); v1 puts all in the corpus, v2 holds one out "
                        "for the probe and puts the others (so 2-4 in v2) in the corpus")
    w.add_argument("--distractors", type=int, nargs=2, default=[3, 5], metavar=("MIN", "MAX"),
                   help="hard sentences (names, numbers, dates, places) around each TL fact (default 3 5; "
                        "world v2 only, v1 ignores it)")
    w.set_defaults(func=_world)
    om = subsub.add_parser("official-meta", help="official meta-training split: (document, probe) pairs from "
                           "invariant_schematic.jsonl sharing no item with NF or TL")
    om.add_argument("--data", required=True, help="the official LAMA-ckl folder")
    om.add_argument("--out", required=True, help="output folder (meta_train.jsonl, meta_val.jsonl, official_meta.json)")
    om.add_argument("--val-fraction", type=float, default=0.2, help="share of pairs in meta_val (default 0.2)")
    om.set_defaults(func=_official_meta)
    cf = subsub.add_parser("crossfit", help="K cross-fitted meta-training folds of a pairs file: fold k's weighter "
                           "trains on the other folds and weights only fold k's documents (metacl.data.crossfit)")
    cf.add_argument("--data", required=True,
                    help="a LAMA-ckl-schema JSONL of (evidence, probe) pairs, or a data folder (its TL file is used)")
    cf.add_argument("--out", required=True, help="output folder (crossfit.json, fold_k/{meta_train,meta_val,deploy}.jsonl)")
    cf.add_argument("--folds", type=int, default=2, help="number of folds (default 2)")
    cf.add_argument("--seed", type=int, default=0, help="fixes the dealing order (default 0)")
    cf.add_argument("--val-fraction", type=float, default=0.1,
                    help="share of each fold's meta-training documents held out as its meta_val (default 0.1)")
    cf.set_defaults(func=_crossfit)
    c = subsub.add_parser("check", help="validate LAMA-ckl-schema JSONL files (exit 2 naming file, line, field)")
    c.add_argument("files", nargs="+", metavar="FILE",
                   help="JSONL files, or folders (a world or the LAMA-ckl folder: every split file in it is checked)")
    c.add_argument("--no-evidence-check", action="store_true",
                   help="do not require the object to appear in the evidence document")
    c.set_defaults(func=_check)
    p.set_defaults(func=lambda args: p.print_help())


def _world(args) -> int:
    from metacl.data.world import write_world
    from metacl.errors import MetaclError

    if not 0 <= args.overwrite_fraction <= 1:
        raise MetaclError(f"--overwrite-fraction {args.overwrite_fraction} must be between 0 and 1")
    from metacl.utils import check_out_kind

    check_out_kind(args.out, "data world")  # never mix a world's files into another run's folder
    if args.version == 1:
        meta = write_world(args.out, args.entities, args.seed, overwrite_fraction=args.overwrite_fraction,
                           paraphrases=args.paraphrases)
    else:
        from metacl.data.world_v2 import write_world_v2

        if not 2 <= args.paraphrases <= 4:
            raise MetaclError(f"--paraphrases {args.paraphrases} must be 2-4 in world v2 (one phrasing per fact is held "
                              "out for its probe, the others go into the corpus); pass e.g. --paraphrases 4")
        opts = {"overwrite_fraction": args.overwrite_fraction, "paraphrases": args.paraphrases - 1}
        opts["n_distractors"] = tuple(args.distractors)
        meta = write_world_v2(args.out, args.entities, args.seed, **opts)
    counts = ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
    print(f"wrote world v{args.version} (entities {args.entities}, seed {args.seed}) to {args.out}: {counts}")
    return 0


def _crossfit(args) -> int:
    from pathlib import Path

    from metacl.data.crossfit import write_crossfit
    from metacl.data.lama import load_ckl_data, load_lama_jsonl
    from metacl.errors import MetaclError
    from metacl.utils import check_out_kind

    src = Path(args.data)
    if src.is_dir():
        items = load_ckl_data(src).tl
    elif src.is_file():
        items = load_lama_jsonl(src)
    else:
        raise MetaclError(f"--data {src} does not exist; pass a LAMA-ckl-schema JSONL file or a data folder")
    check_out_kind(args.out, "data crossfit")
    m = write_crossfit(items, args.out, folds=args.folds, seed=args.seed, val_fraction=args.val_fraction, source=str(src))
    counts = "; ".join(f"fold {k}: " + ", ".join(f"{n} {v}" for n, v in f["counts"].items()) for k, f in enumerate(m["folds"]))
    print(f"wrote {args.folds} cross-fit folds of {m['items']} items to {args.out} ({counts}); next: meta-train each "
          f"fold with `metacl meta-train token-weighting --data {args.out}/fold_K --nf OLD.jsonl --out "
          f"{args.out}/fold_K/weighter ...`, then `ckl run --strategy taalm --taalm-predictor {args.out}`")
    return 0


def _official_meta(args) -> int:
    from metacl.data.official_split import write_official_meta_split

    meta = write_official_meta_split(args.data, args.out, args.val_fraction)
    print(f"wrote official meta split to {args.out}: {meta['counts']}, excluded {meta['excluded_because_shared_with_nf_or_tl']}")
    return 0


def _check(args) -> int:
    from metacl.data.lama import lama_files_in, load_lama_jsonl

    files = [f for arg in args.files for f in lama_files_in(arg)]  # a folder stands for its LAMA-ckl files
    for f in files:
        items = load_lama_jsonl(f, require_object_in_evidence=not args.no_evidence_check)
        print(f"{f}: {len(items)} rows OK")
    return 0
