#!/usr/bin/env bash
# Baselines I on a generated world: every strategy of issue 7 plus finetune and lora, LAMA-ckl
# protocol (probe TL/NF/TL_val before training and after every epoch), 3 seeds, then one table
# with both epoch-selection protocols (paper = best TL epoch, honest = best TL_val epoch).
#
# Usage: experiments/run_baselines1.sh MODEL_DIR WORLD_DIR [EPOCHS] [MAX_ITEMS]
#   MODEL_DIR: a base LM pretrained on WORLD_DIR/pretrain_corpus.jsonl (metacl pretrain)
#   WORLD_DIR: a world from `metacl data world`
# Runs go to runs/baselines1/<strategy>/ (ignored by git); each run's summary.json, table.md and
# plot.png are copied to docs/results/baselines1_<strategy>/, the merged table to
# docs/results/baselines1_table/. Reruns resume: finished seeds are skipped.
# One thread per run so the machine stays usable: OMP_NUM_THREADS=1.
set -euo pipefail
MODEL=${1:?model dir}
WORLD=${2:?world dir}
EPOCHS=${3:-8}
MAX_ITEMS=${4:-}
LR=${LR:-1e-3}
SEEDS=${SEEDS:-"0 1 2"}
STRATEGIES=${STRATEGIES:-"finetune lora mix_review recadam k_adapter rho1 ewc lwf replay agem ncl icl"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
extra=()
if [ -n "$MAX_ITEMS" ]; then extra+=(--max-items "$MAX_ITEMS"); fi
runs=()
for s in $STRATEGIES; do
  out=runs/baselines1/$s
  echo "=== $s $(date -u +%H:%M:%S)"
  metacl ckl run --model "$MODEL" --data "$WORLD" --strategy $s --epochs "$EPOCHS" --seeds $SEEDS \
    --lr "$LR" --batch-size 8 --max-length 128 --no-exact-match --device cpu --out "$out" "${extra[@]}"
  mkdir -p docs/results/baselines1_$s
  cp "$out/summary.json" "$out/table.md" "$out/plot.png" docs/results/baselines1_$s/
  runs+=("$out")
done
if [ "${COMPARE:-1}" = 1 ]; then metacl ckl compare "${runs[@]}" --out docs/results/baselines1_table; fi
