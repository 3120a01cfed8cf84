#!/usr/bin/env bash
# The learned optimizer as a row of the world-v2 baselines protocol (issue 16 / issue 15), on the LM of
# docs/results/lo_v2_table/ (weights_sha256 9660a0ea..., its pretrain.json): the committed
# baselines_v2_table ran on another build of the same command (a2a1ab23..., world_v2_base_lm/), whose start
# scores differ (TL 0.397 vs 0.383), so its rows are not comparable with a run on this LM. Here the
# control rows and the retention baselines run again on this LM, same protocol (experiments/baselines_v2.sh:
# tuned on tl_val, up to 30 epochs, patience 3, all items, seeds 0 1 2), beside finetune+learned.
#
# Usage: experiments/baselines_v2_lo_rows.sh RUNS   (RUNS/w2/{world_e200_d3-5,lm_small_s0} from lo_v2_table.sh)
set -euo pipefail
RUNS=${1:?RUNS (holds w2/world_e200_d3-5 and w2/lm_small_s0)}
W=$RUNS/w2/world_e200_d3-5; M=$RUNS/w2/lm_small_s0
B="--max-length 256 --batch-size 8 --no-exact-match --device cpu"
export METACL=${METACL:-python -m metacl} DOCS=${DOCS:-docs/results/baselines_v2_lo_table} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
S=experiments/baselines_v2.sh
T=$RUNS/bv2/baselines_v2
ROWS="finetune finetune+learned random replay ewc lwf mix_review"
# shellcheck disable=SC2086
EXTRA="$B" bash $S "$RUNS/bv2" "$W" "$M" baselines_v2 $ROWS
EXTRA="$B --oracle-data $W/tl.jsonl $W/tl_val.jsonl" bash $S "$RUNS/bv2" "$W" "$M" baselines_v2 oracle
finals=(); for r in $ROWS oracle; do finals+=("$T/$r/final"); done
$METACL ckl compare "${finals[@]}" --out "$DOCS"
python experiments/baselines_v2_report.py "$DOCS" --json "$DOCS/rows.json" > "$DOCS/rows.md"
{ echo "# written by experiments/baselines_v2_lo_rows.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "experiments/baselines_v2_lo_rows.sh $RUNS  (OMP_NUM_THREADS=$OMP_NUM_THREADS; rows: $ROWS oracle)"
  echo "each row: experiments/baselines_v2.sh with its defaults (LRS=3e-4,1e-3,3e-3 LEARNED_LRS=0.5,1,2,4,8,16 EPOCHS=30 PATIENCE=3 SEEDS=\"0 1 2\" TUNE_SEEDS=0) and EXTRA=\"$B\" (+ --oracle-data for oracle)"
} > "$DOCS/command.txt"
echo "wrote $DOCS/{table.md,plot.png,rows.json,rows.md,command.txt}"
