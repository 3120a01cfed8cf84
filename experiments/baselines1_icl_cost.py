"""Cost per query of in-context learning vs a bare probe, from `metacl ckl run` output folders.

Why: ICL pays for every query with a whole document in the prompt; `probe_accuracy` records the
prompt length and seconds per query in `metrics.jsonl`, this averages them over seeds (epoch 0).

    python experiments/baselines1_icl_cost.py runs/baselines1/finetune runs/baselines1/icl
"""

import json
import sys

for run in sys.argv[1:]:
    rows = [r for r in map(json.loads, open(f"{run}/metrics.jsonl")) if r["epoch"] == 0]
    for k in ("tl", "nf"):
        mean = lambda f: sum(r[f"{k}_{f}"] for r in rows) / len(rows)  # noqa: E731
        print(f"{run} {k}: prompt tokens {mean('prompt_tokens'):.1f}, s/query {mean('seconds_per_query'):.3f}, "
              f"acc {mean('acc'):.3f} ({len(rows)} seeds)")
