#!/usr/bin/env bash
# Baselines II (issue 8): LAMA-ckl rows for spg das osft olora progressive tasl, and the
# task-sequence benchmark (accuracy matrix, ACC/BWT/FWT, heat-maps) for those plus references.
#
# Usage: experiments/run_baselines2.sh ckl|ckl_b1|sequence MODEL_DIR WORLD_DIR
#   MODEL_DIR: a base LM pretrained on WORLD_DIR/pretrain_corpus.jsonl; the reported runs used
#     metacl data world --entities 200 --seed 0 --out runs/taalm/world
#     metacl pretrain --corpus runs/taalm/world/pretrain_corpus.jsonl --size small --out runs/taalm/base_lm --seed 0 --device cpu
# Small budgets on purpose (2 shared CPU cores): override with EPOCHS, MAX_ITEMS, SEEDS, ... .
# SEQ_EXTRA (sequence mode): extra `ckl sequence` options, e.g. "--optimizer learned" or
# "--taalm-predictor runs/taalm/tw/best" (a non-AdamW optimizer's rows are named <strategy>@<optimizer>).
# Runs go to runs/baselines2/ (ignored by git); small summaries and plots are copied to
# docs/results/baselines2_*/. Reruns resume: finished seeds are skipped.
set -euo pipefail
MODE=${1:?ckl, ckl_b1 or sequence}
MODEL=${2:?model dir}
WORLD=${3:?world dir}
SEEDS=${SEEDS:-"0 1 2"}
LR=${LR:-1e-3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# importance estimates on few documents: the CPU budget, not the method, sets these
IMPORTANCE=(--spg-docs 16 --das-docs 16 --osft-docs 16 --tasl-docs 16)

if [ "$MODE" = ckl ]; then
  EPOCHS=${EPOCHS:-4}
  MAX_ITEMS=${MAX_ITEMS:-40}
  STRATEGIES=${STRATEGIES:-"spg das osft olora progressive tasl"}
  runs=()
  for s in $STRATEGIES; do
    out=runs/baselines2/ckl_$s
    extra=()
    if [ "$s" = tasl ]; then extra+=(--tasl-consolidate epoch); fi   # else LAMA-ckl probes never see the merge
    echo "=== $s $(date -u +%H:%M:%S)"
    metacl ckl run --model "$MODEL" --data "$WORLD" --strategy $s --epochs "$EPOCHS" --seeds $SEEDS \
      --lr "$LR" --batch-size 8 --max-length 128 --no-exact-match --device cpu --max-items "$MAX_ITEMS" \
      --out "$out" "${IMPORTANCE[@]}" "${extra[@]}"
    mkdir -p docs/results/baselines2_ckl_$s
    cp "$out/summary.json" "$out/table.md" "$out/plot.png" docs/results/baselines2_ckl_$s/
    runs+=("$out")
  done
  metacl ckl compare "${runs[@]}" --out docs/results/baselines2_ckl_table
elif [ "$MODE" = ckl_b1 ]; then
  # The same rows under EXACTLY the Baselines I settings (runs/baselines1/*/config.json: 3 epochs,
  # 40 items, lr 1e-3, batch 8, max length 128, seeds 0 1 2, same world/base LM), so that one
  # `ckl compare` table holds Baselines I and II. Pass runs/baselines1/base_lm runs/baselines1/world.
  EPOCHS=${EPOCHS:-3}
  MAX_ITEMS=${MAX_ITEMS:-40}
  STRATEGIES=${STRATEGIES:-"spg das osft olora progressive tasl"}
  for s in $STRATEGIES; do
    out=runs/baselines_all/$s
    extra=()
    if [ "$s" = tasl ]; then extra+=(--tasl-consolidate epoch); fi
    echo "=== $s $(date -u +%H:%M:%S)"
    metacl ckl run --model "$MODEL" --data "$WORLD" --strategy $s --epochs "$EPOCHS" --seeds $SEEDS \
      --lr "$LR" --batch-size 8 --max-length 128 --no-exact-match --device cpu --max-items "$MAX_ITEMS" \
      --out "$out" "${IMPORTANCE[@]}" "${extra[@]}"
    mkdir -p docs/results/baselines2_e3_$s
    cp "$out/summary.json" "$out/table.md" "$out/plot.png" docs/results/baselines2_e3_$s/
  done
  if [ "${COMPARE:-1}" = 1 ]; then
    metacl ckl compare runs/baselines1/{finetune,lora,mix_review,recadam,k_adapter,rho1,ewc,lwf,replay,agem,ncl,icl} \
      runs/baselines_all/{spg,das,osft,olora,progressive,tasl} --out docs/results/baselines_all_table
  fi
elif [ "$MODE" = sequence ]; then
  EPOCHS=${EPOCHS:-4}
  PERIODS=${PERIODS:-4}
  FACTS=${FACTS:-12}
  MAX_NF=${MAX_NF:-60}
  STRATEGIES=${STRATEGIES:-"finetune lora spg das osft olora progressive tasl"}
  out=${OUT:-runs/baselines2/sequence}
  metacl ckl sequence --model "$MODEL" --world "$WORLD" --out "$out" --strategies $STRATEGIES \
    --periods "$PERIODS" --facts-per-period "$FACTS" --epochs "$EPOCHS" --seeds $SEEDS --lr "$LR" \
    --batch-size 8 --max-length 128 --max-nf "$MAX_NF" --device cpu "${IMPORTANCE[@]}" ${SEQ_EXTRA:-}
  mkdir -p docs/results/baselines2_sequence
  cp "$out/summary.json" "$out/table.md" "$out"/heatmap_*.png docs/results/baselines2_sequence/
else
  echo "mode must be ckl, ckl_b1 or sequence" >&2; exit 2
fi
