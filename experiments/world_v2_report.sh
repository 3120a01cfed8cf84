#!/usr/bin/env bash
# The merged table, plot and headroom summary of the world-v2 rows that have finished.
# Usage: experiments/world_v2_report.sh RUNS_DIR [TAG]   (TAG default world_v2_d3-5, as experiments/world_v2.sh)
set -euo pipefail
RUNS=${1:?runs dir}; TAG=${2:-world_v2_d3-5}
runs=()
for row in finetune oracle oracle_sentence random lora replay lwf ewc mix_review; do
  [ -f "$RUNS/${TAG}_$row/summary.json" ] && runs+=("$RUNS/${TAG}_$row")
done
python -m metacl ckl compare "${runs[@]}" --out docs/results/world_v2_table
python experiments/world_v2_headroom.py "${runs[@]}" --baseline finetune --json docs/results/world_v2_summary.json \
  --extra "{\"world\": \"$RUNS/world_e200_d3-5\", \"base_lm\": \"docs/results/world_v2_base_lm/pretrain.json\", \"knobs\": {\"entities\": 200, \"distractors\": [3, 5], \"lr\": 1e-3, \"epochs\": 8, \"batch_size\": 8, \"max_length\": 256}}"
