#!/usr/bin/env bash
# Meta-train the two token weighters reported in docs/results/taalm.md (K chosen by
# experiments/taalm_choose_k.sh): TAALM's objective (RUNS/tw) and with the retention term (RUNS/tw_ret).
# Usage: experiments/taalm_meta.sh MODEL_DIR WORLD_DIR RUNS_DIR OUT_NAME  (tw_ret adds the retention term)
# Env: STEPS (60), RET (lambda, 1.0), VAL_EPOCHS (3; 8 = the CKL deployment's epochs), RESUME=1.
set -euo pipefail
MODEL=${1:?}; WORLD=${2:?}; RUNS=${3:?}; WHICH=${4:?output name, e.g. tw or tw_ret}
STEPS=${STEPS:-60}; RET=${RET:-1.0}; VAL_EPOCHS=${VAL_EPOCHS:-3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ret=(); if [ "$WHICH" = tw_ret ]; then ret=(--retention "$RET"); fi
metacl meta-train token-weighting --model "$MODEL" --data "$WORLD" --out "$RUNS/$WHICH" --inner-steps 2 \
  --inner-optimizer adamw --inner-lr 1e-3 --outer-lr 3e-3 --meta-batch 4 --steps "$STEPS" --max-length 256 \
  --val-every 20 --val-epochs "$VAL_EPOCHS" --val-items 32 --val-lr 1e-3 --seed 0 --device cpu "${ret[@]}" ${RESUME:+--resume}
