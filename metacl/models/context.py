"""How many positions a model can take, and fitting `--max-length` and the probes to it.

Why: a GPT-2-style model with learned absolute positions (`n_positions` 64, say) crashes with
a raw `IndexError: index out of range in self` on the first input longer than its context; with
metacl's default `--max-length 256` that happened after epoch 0 had already been written.

The choice, per kind of input:

- training windows (`--max-length`): *clamped* to the model's context, with a one-line notice.
  Documents longer than a window are cut into consecutive windows (`metacl.ckl.batching`), so a
  shorter window loses no text, only context per window; the default 256 was never the user's
  choice for their model; and the clamped value is what `config.json` records and hashes, so
  rerunning the same command resumes the same run.
- probes (TL / NF / TL_val sentences): *refused* before anything is written when one is longer
  than the context, naming the file's item: a probe cannot be cut without losing the fact's
  subject, so no silent fix exists.

Positions are read from the config (`n_positions`, `max_position_embeddings`, `n_ctx`,
`max_seq_len`, `seq_length`); a config with none of them is taken to have no limit. For rotary
models (Llama) the limit is what they were trained for rather than a hard crash, and is
respected the same way.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from metacl.errors import MetaclError

_POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "seq_length")


def context_length(config: Any) -> int | None:
    """The number of positions the model takes (the smallest limit its config states), or None."""
    found = []
    for k in _POSITION_KEYS:
        v = getattr(config, k, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            found.append(v)
    return min(found) if found else None


def fit_max_length(config: Any, max_length: int, option: str = "--max-length",
                   notice: Callable[[str], None] | None = None) -> int:
    """`max_length`, clamped to the model's context; a clamp is reported once through `notice`
    (default: one `metacl: note:` line on stderr)."""
    ctx = context_length(config)
    if ctx is None or max_length <= ctx:
        return max_length
    msg = (f"{option} {max_length} is longer than the model's context ({ctx} positions); training windows use "
           f"{option} {ctx} instead (pass {option} {ctx} or less to silence this)")
    (notice or _stderr_note)(msg)
    return ctx


_NOTED: set[str] = set()


def _stderr_note(msg: str) -> None:
    """Print a note once per process (meta-training validations rerun the protocol many times)."""
    if msg not in _NOTED:
        _NOTED.add(msg)
        print(f"metacl: note: {msg}", file=sys.stderr)


def check_probes_fit(tokenizer: Any, items: Sequence[Any], context: int | None, what: str,
                     generate: bool = True) -> None:
    """Refuse (one line) a probe whose tokens do not fit the model's context.

    `generate`: exact match also generates the object greedily (its length + 2 tokens after the
    prefix), so that room is needed too.
    """
    if context is None or not items:
        return
    from metacl.core.probes import item_field, split_probe

    fulls, extra = [], []
    for it in items:
        p, o = split_probe(it)
        fulls.append(f"{p} {o}" if p else o)
        extra.append(2 if generate else 0)
    lengths = [len(ids) for ids in tokenizer(fulls, add_special_tokens=True)["input_ids"]]
    need = [n + e for n, e in zip(lengths, extra)]
    worst = max(range(len(items)), key=lambda i: need[i])
    if need[worst] > context:
        n_bad = sum(1 for n in need if n > context)
        uuid = item_field(items[worst], "uuid", "?")
        raise MetaclError(f"{what}: {n_bad} probe(s) need more positions than the model's context of {context} "
                          f"(e.g. uuid {uuid}: {need[worst]} tokens{' with exact-match generation' if generate else ''}); "
                          "use a model with a longer context, or drop those items"
                          + (" (or pass --no-exact-match)" if generate and lengths[worst] <= context else ""))
