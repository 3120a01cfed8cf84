"""Mean share of training tokens the object oracle marks in TL documents: the mean weight of the
mean-matched `random` row (uniform weights with this mean, placed at random).

    python experiments/world_v2_object_share.py BASE_LM WORLD/tl.jsonl WORLD/tl_val.jsonl   # prints e.g. 0.031
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metacl.models.loading import load_tokenizer  # noqa: E402
from metacl.strategies.oracle_weights import object_token_mask  # noqa: E402


def main(argv: list[str]) -> int:
    tok = load_tokenizer(argv[0])
    marked = total = 0
    for f in argv[1:]:
        for line in open(f, encoding="utf-8"):
            r = json.loads(line)
            ids = tok(r["evidence"])["input_ids"]
            m = object_token_mask(ids, r["evidence"], r["object"], tok)
            marked += sum(m[1:])  # labels start at the second token
            total += len(ids) - 1
    print(f"{marked / total:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
