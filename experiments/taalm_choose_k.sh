#!/usr/bin/env bash
# Choose the number of inner steps K (and the inner optimizer) for token-weighting meta-training.
# Each configuration meta-trains for STEPS steps from the same seed and is then validated with the
# real CKL protocol (taalm strategy, VAL_EPOCHS epochs, first 32 meta_val facts + 32 meta_nf probes).
# The step-0 validation (untrained weighter ~ plain fine-tuning) is run once, by the first config.
# Usage: experiments/taalm_choose_k.sh MODEL_DIR WORLD_DIR RUNS_DIR
set -euo pipefail
MODEL=${1:?}; WORLD=${2:?}; RUNS=${3:?}
STEPS=${STEPS:-20}; VAL_EPOCHS=${VAL_EPOCHS:-3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
first=1
for cfg in "1 adamw 1e-3" "2 adamw 1e-3" "2 sgd 0.05" "4 sgd 0.05"; do
  set -- $cfg
  out=$RUNS/k_$1_$2
  skip=(--skip-initial-val); if [ $first = 1 ]; then skip=(); first=0; fi
  echo "=== K=$1 $2 lr=$3 $(date -u +%H:%M:%S)"
  metacl meta-train token-weighting --model "$MODEL" --data "$WORLD" --out "$out" --inner-steps $1 \
    --inner-optimizer $2 --inner-lr $3 --meta-batch 4 --steps $STEPS --val-every $STEPS \
    --val-epochs $VAL_EPOCHS --val-items 32 --val-lr 1e-3 --seed 0 --device cpu "${skip[@]}"
  tail -n 3 "$out/metrics.jsonl"
done
