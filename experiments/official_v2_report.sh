#!/usr/bin/env bash
# The merged table, plot and headroom summary of the official-track rows that have finished.
# Usage: experiments/official_v2_report.sh RUNS_DIR [TAG]   (TAG default official_v2, as experiments/official_v2.sh)
set -euo pipefail
RUNS=${1:?runs dir}; TAG=${2:-official_v2}
runs=()
for row in finetune oracle oracle_sentence random lora replay lwf ewc mix_review; do
  [ -f "$RUNS/${TAG}_$row/summary.json" ] && runs+=("$RUNS/${TAG}_$row")
done
python -m metacl ckl compare "${runs[@]}" --out docs/results/${TAG}_table
python experiments/world_v2_headroom.py "${runs[@]}" --baseline finetune --json docs/results/${TAG}_summary.json \
  --extra "{\"data\": \"../shared/data/lama_ckl (official LAMA-ckl: TL variant.jsonl, NF invariant_descriptive.jsonl)\", \"base_lm\": \"docs/results/${TAG}_base_lm/pretrain.json\", \"knobs\": {\"lr\": ${LR:-1e-3}, \"epochs\": ${EPOCHS:-4}, \"batch_size\": 8, \"max_length\": ${MAXLEN:-512}}}"
