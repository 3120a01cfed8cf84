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
#             meta2     meta-train RUNS_DIR/tw_off2_k${K2}_lr${LR2}_o${OUTER2}: as meta, but with a longer/larger inner loop
#                       (K2 AdamW steps at lr LR2; default 4 and 1e-2, chosen with experiments/taalm_inner_probe.py,
#                       docs/results/taalm.md "Official files: a second try with a longer inner loop")
#             probe2    inner-loop probe grid (query-object NLL after K AdamW steps, 16 meta_train examples)
#                       -> docs/results/taalm_official2_probe/{full,lora_r4}.json
#             valcheck  can meta-validation see a good weighter? the validation's CKL run (32 meta_val facts,
#                       3 epochs, lr 1e-3) with finetune and with oracle weights -> docs/results/taalm_official2_valcheck/
#             finetune | taalm | random   CKL rows on the official files, with the settings of the
#                       existing official finetune row (docs/results/ckl_finetune_lora.md): AdamW lr 1e-3,
#                       5 epochs, batch 8, max length 256, exact match on.
#                       taalm deploys $PREDICTOR; random shuffles its weights within each document.
# Env: K2 (4), LR2 (1e-2), OUTER2 (outer lr of meta2, 3e-3), SEEDS ("0"), STEPS (60), VAL_EVERY (20), PREDICTOR (RUNS_DIR/tw_off60/last: see taalm.md for why
#      not best/), MAX_ITEMS (optional; then used for every CKL row).
# As run for docs/results/taalm.md:
#   experiments/taalm_official.sh runs/official/base_lm runs/taalm/world runs/official meta
#   STEPS=300 VAL_EVERY=50 experiments/taalm_official.sh runs/official/base_lm runs/taalm/world runs/official meta   # stopped at step 154
#   experiments/taalm_official.sh runs/official/base_lm runs/taalm/world runs/official finetune taalm
# Second try, longer inner loop (docs/results/taalm.md, "Official files: a second try with a longer inner loop"):
#   experiments/taalm_official.sh runs/official/base_lm runs/taalm/world runs/official probe2 meta2
#   OUTER2=3e-4 experiments/taalm_official.sh runs/official/base_lm runs/taalm/world runs/official meta2
#   OUTER2=1e-3 experiments/taalm_official.sh runs/official/base_lm runs/taalm/world runs/official meta2
#   experiments/taalm_official.sh runs/official/base_lm runs/taalm/world runs/official valcheck
#   (no meta2 checkpoint beat step 0 in validation, so nothing was deployed on the official files)
# Each CKL run's summary.json, table.md and plot.png are copied to docs/results/taalm_official_<stage>/.
set -euo pipefail
MODEL=${1:?base LM}; WORLD=${2:?world dir}; RUNS=${3:?runs dir}; shift 3
DATA=${DATA:-/work/shared/data/lama_ckl}
K2=${K2:-4}; LR2=${LR2:-1e-2}; OUTER2=${OUTER2:-3e-3};
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
    meta2) metacl meta-train token-weighting --model "$MODEL" --data "$WORLD" --out "$RUNS/tw_off2_k${K2}_lr${LR2}_o${OUTER2}" \
            --inner-steps "$K2" --inner-optimizer adamw --inner-lr "$LR2" --outer-lr "$OUTER2" --meta-batch 4 --steps "$STEPS" \
            --max-length 256 --val-every "$VAL_EVERY" --val-epochs 3 --val-items 32 --val-lr 1e-3 --seed 0 --device cpu \
            ${RESUME:+--resume}
          continue ;;
    probe2) mkdir -p docs/results/taalm_official2_probe
          python experiments/taalm_inner_probe.py "$MODEL" "$WORLD" --n 16 --max-length 256 \
            --grid adamw:1e-3:2,adamw:3e-3:2,adamw:1e-2:2,adamw:1e-3:4,adamw:3e-3:4,adamw:1e-2:4 \
            --json docs/results/taalm_official2_probe/full.json
          python experiments/taalm_inner_probe.py "$MODEL" "$WORLD" --n 16 --max-length 256 --lora --lora-rank 4 \
            --grid adamw:1e-3:4,adamw:1e-2:4 --json docs/results/taalm_official2_probe/lora_r4.json
          continue ;;
    valcheck) mkdir -p docs/results/taalm_official2_valcheck
          for s in finetune oracle; do
            opt=(finetune); if [ $s = oracle ]; then opt=(finetune oracle --oracle-data "$WORLD/meta_val.jsonl"); fi
            metacl ckl run --model "$MODEL" --data "$WORLD" --tl "$WORLD/meta_val.jsonl" --nf "$WORLD/meta_nf.jsonl" \
              --strategy "${opt[@]}" --epochs 3 --seeds 0 --lr 1e-3 --batch-size 8 --max-length 256 --no-exact-match \
              --max-items 32 --device cpu --out "$RUNS/valcheck_$s"
            cp "$RUNS/valcheck_$s/table.md" "docs/results/taalm_official2_valcheck/${s}_table.md"
            cp "$RUNS/valcheck_$s/summary.json" "docs/results/taalm_official2_valcheck/${s}_summary.json"
          done
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
