#!/usr/bin/env bash
# Issue 16: the task-sequence table on world v2 (4 periods x 12 facts, v2 documents and held-out probe
# phrasings: metacl.data.world_sequence_v2), every strategy, ACC / BWT / FWT / NF, 3 seeds.
# One `ckl sequence` call per row into the same --out (same periods, NF probes, epochs, seeds: the run
# refuses an --out whose settings differ), so summary.json / table.md / heat-maps grow row by row.
#
# Usage: experiments/sequence_v2.sh RUNS_DIR [ROW...]
#   ROW: a strategy name, `oracle` (object oracle on the period files), `taalm` (the A13 weighter of
#        docs/results/taalm_v2.md), `learned` (finetune with the shipped learned optimizer)
# Env: SEEDS ("0 1 2"), EPOCHS (4), LR (1e-3), OMP_NUM_THREADS (2)
# World and base LM: RUNS/w2/world_e200_d3-5, RUNS/w2/lm_small_s0 (experiments/world_v2.sh).
set -euo pipefail
RUNS=${1:?runs dir}; shift
ROWS=${*:-"finetune lora taalm oracle learned agem das ewc icl k_adapter lwf mix_review ncl olora osft progressive recadam replay rho1 salient_span spg tasl"}
SEEDS=${SEEDS:-"0 1 2"}; EPOCHS=${EPOCHS:-4}; LR=${LR:-1e-3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TQDM_DISABLE=1
MODEL=$RUNS/w2/lm_small_s0; WORLD=$RUNS/w2/world_e200_d3-5
OUT=$RUNS/sequence_v2
DOCS=docs/results/sequence_v2
IMPORTANCE=(--spg-docs 16 --das-docs 16 --osft-docs 16 --tasl-docs 16)
for row in $ROWS; do
  echo "=== $row $(date -u +%H:%M:%S)"
  extra=(); strat=$row
  case $row in
    taalm) extra=(--taalm-predictor "$RUNS/taalm_v2_abl/tw_A13/best") ;;
    oracle) extra=(--oracle-data "$OUT"/sequence/period_*.jsonl) ;;   # the period files the first row wrote
    learned) strat=finetune; extra=(--optimizer learned) ;;
    tasl) extra=(--tasl-consolidate epoch) ;;
  esac
  python -m metacl ckl sequence --model "$MODEL" --world "$WORLD" --out "$OUT" --strategies $strat \
    --periods 4 --facts-per-period 12 --epochs "$EPOCHS" --seeds $SEEDS --lr "$LR" --batch-size 8 --max-length 256 \
    --max-nf 60 --device cpu "${IMPORTANCE[@]}" "${extra[@]}" > "$OUT.$row.log" 2>&1 || echo "FAILED: $row (see $OUT.$row.log)"
  mkdir -p $DOCS && cp "$OUT/summary.json" "$OUT/table.md" "$OUT"/heatmap_*.png $DOCS/ 2>/dev/null || true
done
echo "=== done $(date -u +%H:%M:%S)"
