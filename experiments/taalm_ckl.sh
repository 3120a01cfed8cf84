#!/usr/bin/env bash
# CKL evaluation of the token-weighting strategies and their references on a generated world:
# finetune, lora, oracle, random, taalm, taalm+retention. Same protocol for all (the one of
# experiments/run_baselines1.sh): AdamW lr 1e-3, batch 8, max length 128, EPOCHS epochs,
# probes before training and after every epoch, 3 seeds.
#
# Usage: experiments/taalm_ckl.sh MODEL_DIR WORLD_DIR RUNS_DIR STRATEGY_SET...
#   STRATEGY_SET: finetune | lora | oracle | salient_span | taalm | taalm_retention | random | random_retention | taalm60 | random60 | taalm60v8 | random60v8
#   taalm uses RUNS_DIR/tw/best, taalm_retention RUNS_DIR/tw_ret/best (see experiments/taalm_meta.sh);
#   random shuffles that predictor's own weights within each document (same mean and spread).
# Each run's summary.json + plot.png are copied to docs/results/taalm_<set>/.
set -euo pipefail
MODEL=${1:?model dir}; WORLD=${2:?world dir}; RUNS=${3:?runs dir}; shift 3
EPOCHS=${EPOCHS:-8}; LR=${LR:-1e-3}; SEEDS=${SEEDS:-"0 1 2"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for set in "$@"; do
  case $set in
    finetune) strat=(finetune) ;;
    lora) strat=(lora) ;;
    oracle) strat=(oracle --oracle-data "$WORLD/tl.jsonl" "$WORLD/tl_val.jsonl") ;;
    salient_span) strat=(salient_span) ;;   # control: capitalised words and numbers only
    taalm) strat=(taalm --taalm-predictor "$RUNS/tw/best") ;;
    taalm_retention) strat=(taalm --taalm-predictor "$RUNS/tw_ret/best") ;;
    random) strat=(random --random-predictor "$RUNS/tw/best") ;;
    random_retention) strat=(random --random-predictor "$RUNS/tw_ret/best") ;;
    taalm60) strat=(taalm --taalm-predictor "$RUNS/tw60/best") ;;   # tw resumed to 60 meta-steps
    random60) strat=(random --random-predictor "$RUNS/tw60/best") ;;
    taalm60v8) strat=(taalm --taalm-predictor "$RUNS/tw60v8/best") ;;   # 60 meta-steps, validation with 8 CKL epochs
    random60v8) strat=(random --random-predictor "$RUNS/tw60v8/best") ;;
    *) echo "unknown set $set" >&2; exit 2 ;;
  esac
  out=$RUNS/ckl_$set
  echo "=== $set $(date -u +%H:%M:%S)"
  metacl ckl run --model "$MODEL" --data "$WORLD" --strategy "${strat[@]}" --epochs "$EPOCHS" --seeds $SEEDS \
    --lr "$LR" --batch-size 8 --max-length 128 --no-exact-match --device cpu --out "$out"
  mkdir -p docs/results/taalm_$set
  cp "$out/summary.json" "$out/plot.png" docs/results/taalm_$set/
done
