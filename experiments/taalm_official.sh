#!/usr/bin/env bash
# TAALM on the official LAMA-ckl files with a locally pretrained LM (docs/results/taalm.md,
# section "Official LAMA-ckl files").
#
# Why a generated world for meta-training: a weighter must share the base LM's tokenizer, so it
# is meta-trained FOR the official base LM, but on a generated world's meta_train / meta_val
# documents, never on the official TL items it is scored on. What is measured is transfer from
# generated biographies to Wikipedia-style evidence.
#
# Usage: experiments/taalm_official.sh BASE_LM WORLD_DIR RUNS_DIR STAGE...
#   BASE_LM   the 60-epoch official base LM (docs/results/base_lm.md), e.g. runs/official/base_lm
#   WORLD_DIR a `metacl data world` folder (meta_train/meta_val/meta_nf), e.g. runs/taalm/world
#   STAGE     meta      meta-train RUNS_DIR/tw_off$STEPS (options of experiments/taalm_meta.sh: K 2,
#                       AdamW 1e-3 inner, outer lr 3e-3, meta-batch 4, validation = 3 CKL epochs on 32 meta_val facts)
#             finetune | taalm | random   CKL rows on the official files, with the settings of the
#                       existing official finetune row (docs/results/ckl_finetune_lora.md): AdamW lr 1e-3,
#                       5 epochs, batch 8, max length 256, exact match on.
#                       taalm deploys $PREDICTOR; random shuffles its weights within each document.
# Env: SEEDS ("0"), STEPS (60), VAL_EVERY (20), PREDICTOR (RUNS_DIR/tw_off60/last: see taalm.md for why
#      not best/), MAX_ITEMS (optional; then used for every CKL row).
# As run for docs/results/taalm.md:
#   experiments/taalm_official.sh runs/official/base_lm runs/taalm/world runs/official meta
#   STEPS=300 VAL_EVERY=50 experiments/taalm_official.sh runs/official/base_lm runs/taalm/world runs/official meta   # stopped at step 154
#   experiments/taalm_official.sh runs/official/base_lm runs/taalm/world runs/official finetune taalm
# Each CKL run's summary.json, table.md and plot.png are copied to docs/results/taalm_official_<stage>/.
set -euo pipefail
MODEL=${1:?base LM}; WORLD=${2:?world dir}; RUNS=${3:?runs dir}; shift 3
DATA=${DATA:-/work/shared/data/lama_ckl}
SEEDS=${SEEDS:-0}; STEPS=${STEPS:-60}; VAL_EVERY=${VAL_EVERY:-20}
PREDICTOR=${PREDICTOR:-$RUNS/tw_off60/last}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
items=(); if [ -n "${MAX_ITEMS:-}" ]; then items=(--max-items "$MAX_ITEMS"); fi
for stage in "$@"; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    meta) metacl meta-train token-weighting --model "$MODEL" --data "$WORLD" --out "$RUNS/tw_off$STEPS" --inner-steps 2 \
            --inner-optimizer adamw --inner-lr 1e-3 --outer-lr 3e-3 --meta-batch 4 --steps "$STEPS" --max-length 256 \
            --val-every "$VAL_EVERY" --val-epochs 3 --val-items 32 --val-lr 1e-3 --seed 0 --device cpu ${RESUME:+--resume}
          continue ;;
    finetune) strat=(finetune) ;;
    taalm) strat=(taalm --taalm-predictor "$PREDICTOR") ;;
    random) strat=(random --random-predictor "$PREDICTOR") ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
  out=$RUNS/ckl_$stage
  metacl ckl run --model "$MODEL" --data "$DATA" --strategy "${strat[@]}" --epochs 5 --seeds $SEEDS \
    --lr 1e-3 --batch-size 8 --max-length 256 --device cpu "${items[@]}" --out "$out"
  mkdir -p "docs/results/taalm_official_$stage"
  cp "$out/summary.json" "$out/table.md" "$out/plot.png" "docs/results/taalm_official_$stage/"
done
echo "=== done $(date -u +%H:%M:%S)"
