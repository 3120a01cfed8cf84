"""`metacl pretrain`: train a BPE tokenizer and a Llama-style LM from scratch on local text."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a small Llama-style base LM (and its tokenizer) from scratch")
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE",
                   help="plain-text files (one document per line) or JSONL with a 'text' or 'evidence' field")
    p.add_argument("--size", choices=["tiny", "small", "base"], default="small",
                   help="tiny: tests; small: CPU research (2.16M params); base: GPU; all 512-token context (default small)")
    p.add_argument("--out", required=True, help="output folder (loadable with AutoModelForCausalLM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the corpus (overrides --steps)")
    p.add_argument("--batch-tokens", type=int, default=None, help="tokens per step (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.set_defaults(func=_pretrain)


def _pretrain(args) -> int:
    import shlex

    from metacl.models.pretrain import pretrain

    # the command in canonical form (every option spelled out), so pretrain.json says how to rebuild
    opts = [("--size", args.size), ("--seed", args.seed), ("--steps", args.steps), ("--epochs", args.epochs),
            ("--batch-tokens", args.batch_tokens), ("--lr", args.lr)]
    command = " ".join(["metacl pretrain --corpus"] + [shlex.quote(str(c)) for c in args.corpus]
                       + [f"{k} {v}" for k, v in opts if v is not None] + ["--out", shlex.quote(str(args.out))])
    s = pretrain(args.corpus, args.size, args.out, seed=args.seed, steps=args.steps,
                 batch_tokens=args.batch_tokens, lr=args.lr, epochs=args.epochs, device=args.device, command=command)
    print(f"pretrained {s['size']} LM ({s['parameters'] / 1e6:.2f}M params, vocab {s['vocab_size']}) on "
          f"{s['documents']} documents / {s['tokens']} tokens: {s['preset']['steps']} steps ({s['epochs']} epochs), "
          f"final loss {s['final_loss']:.3f}, {s['seconds']:.0f}s -> {s['out_dir']}")
    return 0
