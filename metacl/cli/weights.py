"""`metacl weights show`: print a document with a token weighter's weights; write a shaded PNG and HTML.

    metacl weights show --predictor runs/tw/best --text doc.txt [--out shown/]
    metacl weights show --predictor runs/tw --data WORLD/tl.jsonl --items 3 [--start 0] [--out shown/]

`--text FILE`: the whole file is one document. `--data FILE`: the `evidence` of LAMA-schema rows,
with their object's weight compared with the rest. Writes OUT/<i>_<name>.png, OUT/<i>_<name>.html
(hover a token for its weight) and OUT/weights.json (every token and weight).
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("weights", help="inspect a token weighter's weights on documents")
    subsub = p.add_subparsers(dest="weights_command", metavar="COMMAND")
    s = subsub.add_parser("show", help="print a document with its weights; write a shaded PNG and HTML",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--predictor", required=True,
                   help="token weighter: the --out folder of `metacl meta-train token-weighting` (uses best/) or best/, last/")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", metavar="FILE", help="a text file holding one document")
    g.add_argument("--data", metavar="FILE", help="a LAMA-schema JSONL file; shows the evidence of --items rows")
    s.add_argument("--items", type=int, default=1, help="with --data: how many rows to show (default 1)")
    s.add_argument("--start", type=int, default=0, help="with --data: index of the first row (default 0)")
    s.add_argument("--out", default="weights_show", help="folder for the PNG/HTML/JSON files (default ./weights_show)")
    s.add_argument("--max-length", type=int, default=256, help="tokens per document, as in training (default 256)")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_show)
    p.set_defaults(func=lambda args: p.print_help())


def cmd_show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from metacl.errors import MetaclError
    from metacl.meta.show_weights import documents_from_data, documents_from_text, format_document, load_for_show, show_documents

    if args.items < 1:
        raise MetaclError(f"--items {args.items} must be >= 1; pass e.g. --items 3")
    if args.max_length < 2:
        raise MetaclError(f"--max-length {args.max_length} must be >= 2; pass e.g. --max-length 256")
    if args.start < 0:
        raise MetaclError(f"--start {args.start} is negative; pass a row index >= 0")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise MetaclError(f"--out {args.out} is a file, not a folder; pass a new or existing folder")
    docs = documents_from_text(args.text) if args.text else documents_from_data(args.data, args.items, args.start)
    weighter, tok = load_for_show(args.predictor, args.device)
    shown, written = show_documents(weighter, tok, docs, args.out, args.max_length)
    for d in shown:
        print(format_document(d))
    print("wrote " + " ".join(str(p) for p in written))
    return 0
