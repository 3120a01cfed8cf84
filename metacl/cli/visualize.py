"""`metacl visualize`: shade a document's tokens by a token weighter's weights (PNG or HTML)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("visualize", help="shade a document's tokens by a token weighter's weights")
    p.add_argument("--predictor", required=True, help="folder written by `metacl meta-train token-weighting` (or its best/)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--text", help="the document")
    g.add_argument("--file", help="a text file holding the document")
    p.add_argument("--out", required=True, help="output .png or .html")
    p.add_argument("--title", default="", help="title above the shaded tokens")
    p.set_defaults(func=cmd_visualize)


def cmd_visualize(args: argparse.Namespace) -> int:
    from metacl.errors import MetaclError
    from metacl.meta.token_weighting import TokenWeighter
    from metacl.meta.visualize import shade_document

    if (args.text is None) == (args.file is None):
        raise MetaclError("give the document as --text TEXT or --file FILE (one of them)")
    tw = TokenWeighter.from_pretrained(args.predictor)
    if tw.tokenizer is None:
        raise MetaclError(f"{args.predictor} holds no tokenizer; re-save the weighter with its tokenizer")
    text = args.text if args.text is not None else Path(args.file).read_text()
    print(shade_document(tw, tw.tokenizer, text, args.out, args.title))
    return 0
