#!/usr/bin/env bash
# Issue 8: complete the task-sequence table with every strategy of Baselines I and II, finetune,
# lora and the two meta-learners, on the SAME sequence as runs/baselines2/sequence (same --out, so
# the same periods, NF probes, epochs, seeds; `ckl sequence` refuses the --out if any of these differ).
# One `ckl sequence` call per row, so summary.json / table.md / heat-maps are refreshed after each.
#   experiments/run_seq_all.sh [TAALM_PREDICTOR]   (default runs/taalm/tw/best, the 20-step weighter
#   of docs/results/taalm.md). The learned optimizer uses the weights shipped in metacl/optim/weights/.
set -euo pipefail
PRED=${1:-runs/taalm/tw/best}
MODEL=runs/taalm/base_lm
WORLD=runs/taalm/world
# up to 3 tries per row: finished seeds are skipped on a retry, and a row that keeps failing is
# reported and skipped rather than stopping the rows after it
run() {
  for t in 1 2 3; do experiments/run_baselines2.sh sequence "$MODEL" "$WORLD" && return 0; sleep 30; done
  echo "FAILED: $STRATEGIES ${SEQ_EXTRA:-}"
}
for s in ${ROWS:-icl taalm learned rho1 lwf mix_review recadam agem k_adapter ncl}; do
  echo "=== $s $(date -u +%H:%M:%S)"
  case $s in
    taalm)   STRATEGIES=taalm SEQ_EXTRA="--taalm-predictor $PRED" run ;;
    learned) sha256sum metacl/optim/weights/default.safetensors
             STRATEGIES=finetune SEQ_EXTRA="--optimizer learned" run ;;
    *)       STRATEGIES=$s run ;;
  esac
done
