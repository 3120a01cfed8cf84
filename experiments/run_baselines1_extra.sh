#!/usr/bin/env bash
# Extra Baselines I runs next to run_baselines1.sh (same world, model, epochs and items):
# NCL with a smaller step (its default lr 1e-3 forgot and did not learn), and a composition
# (rho1 token weights x recadam gradient edit) to show hooks compose in the real protocol.
# Usage: experiments/run_baselines1_extra.sh MODEL_DIR WORLD_DIR [EPOCHS] [MAX_ITEMS]
set -euo pipefail
MODEL=${1:?model dir}; WORLD=${2:?world dir}; EPOCHS=${3:-3}; MAX_ITEMS=${4:-40}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
common=(--model "$MODEL" --data "$WORLD" --epochs "$EPOCHS" --seeds 0 1 2 --lr 1e-3 --batch-size 8 --max-length 128
        --no-exact-match --device cpu --max-items "$MAX_ITEMS")
metacl ckl run "${common[@]}" --strategy ncl --ncl-lr 2e-4 --out runs/baselines1/ncl_lr2e-4
metacl ckl run "${common[@]}" --strategy rho1 recadam --out runs/baselines1/rho1+recadam
for r in ncl_lr2e-4 rho1+recadam; do
  mkdir -p docs/results/baselines1_$r
  cp runs/baselines1/$r/summary.json runs/baselines1/$r/table.md runs/baselines1/$r/plot.png docs/results/baselines1_$r/
done
