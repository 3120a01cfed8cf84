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
    w.add_argument("--paraphrases", type=int, default=4, help="templates per old fact in the corpus (1-4)")
    w.set_defaults(func=_world)
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
    meta = write_world(args.out, args.entities, args.seed, overwrite_fraction=args.overwrite_fraction,
                       paraphrases=args.paraphrases)
    counts = ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
    print(f"wrote world (entities {args.entities}, seed {args.seed}) to {args.out}: {counts}")
    return 0


def _check(args) -> int:
    from metacl.data.lama import lama_files_in, load_lama_jsonl

    files = [f for arg in args.files for f in lama_files_in(arg)]  # a folder stands for its LAMA-ckl files
    for f in files:
        items = load_lama_jsonl(f, require_object_in_evidence=not args.no_evidence_check)
        print(f"{f}: {len(items)} rows OK")
    return 0
