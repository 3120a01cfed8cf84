"""Does the world-v2 base LM know the old world *in the held-out phrasing*?

    python experiments/world_v2_base_lm.py BASE_LM WORLD --json docs/results/world_v2_base_lm/probe.json

Scores NF and meta_nf (old facts) twice with the teacher-forced LAMA-ckl metric: in the probe
phrasing (never in the corpus for that fact: what `ckl run` scores) and in a phrasing the corpus
shows for that fact (`fact_sentence`, verbatim in the corpus). The gap is what extraction across
phrasings costs. TL and tl_val (unknown new facts) give the partial-credit floor.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metacl.core.probes import probe_accuracy  # noqa: E402
from metacl.models.loading import load_model_and_tokenizer  # noqa: E402
from metacl.utils import write_json_atomic  # noqa: E402


def _rows(world: Path, name: str) -> list[dict]:
    return [json.loads(l) for l in (world / f"{name}.jsonl").read_text().splitlines() if l.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("world")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    model, tok = load_model_and_tokenizer(a.model, device="cpu")
    world = Path(a.world)
    out = {"model": a.model, "world": a.world, "command": "python " + " ".join(sys.argv)}
    for name in ("nf", "meta_nf", "tl", "tl_val"):
        rows = _rows(world, name)
        out[f"{name}_probe_phrasing"] = probe_accuracy(model, tok, rows, exact_match=True)
        if name in ("nf", "meta_nf"):
            shown = [{"task_descriptive": r["fact_sentence"], "object": r["object"]} for r in rows]
            out[f"{name}_corpus_phrasing"] = probe_accuracy(model, tok, shown, exact_match=True)
        for k in list(out):
            if isinstance(out[k], dict) and "per_item" in out[k]:
                out[k] = {x: out[k][x] for x in ("acc", "em", "n")}
        print(name, {k: v for k, v in out.items() if k.startswith(name + "_")})
    pj = Path(a.model) / "pretrain.json"
    if pj.is_file():
        out["pretrain"] = json.loads(pj.read_text())
    if a.json:
        write_json_atomic(a.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
