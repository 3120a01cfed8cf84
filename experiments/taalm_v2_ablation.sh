#!/usr/bin/env bash
# The ablations of docs/results/taalm_v2_plan.md: one change at a time against A0 (the defaults),
# each = one meta-training + one `ckl run --strategy taalm`, 1 seed, then the closure table.
# Results: docs/results/taalm_v2_plan.md (A0-A9) and docs/results/taalm_v2.md (A10-A17).
#
# Usage: experiments/taalm_v2_ablation.sh MODEL_DIR WORLD_DIR RUNS_DIR ID...
#   ID: refs (finetune, oracle, salient_span rows; run once) | A0 .. A9 (see the case below) | table
#   table: prints/writes the closure of every ckl_* run present (experiments/taalm_closure.py)
# Env: STEPS (60), VAL_EVERY (20), EPOCHS (8), SEED (0), DEVICE (cpu), RESUME=1 (meta-training),
#      PLUS (A17: a folder whose meta_train.jsonl adds fresh worlds' pairs; meta_val/meta_nf = the world's),
#      NO_CKL=1 (meta-train only: no 1-seed ckl row on the world's TL, e.g. when the choice must not see TL)
# Meta-training as experiments/taalm_meta.sh (K 2 AdamW 1e-3, outer 3e-3, meta-batch 4, 256 tokens,
# validation 3 CKL epochs on 32 meta_val facts); CKL as experiments/taalm_ckl.sh (AdamW 1e-3,
# batch 8, 128 tokens, EPOCHS epochs). Later flags override earlier ones (argparse keeps the last).
set -euo pipefail
MODEL=${1:?model dir}; WORLD=${2:?world dir}; RUNS=${3:?runs dir}; shift 3
STEPS=${STEPS:-60}; VAL_EVERY=${VAL_EVERY:-20}; EPOCHS=${EPOCHS:-8}; SEED=${SEED:-0}; DEVICE=${DEVICE:-cpu}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MT=(--inner-steps 2 --inner-optimizer adamw --inner-lr 1e-3 --outer-lr 3e-3 --meta-batch 4 --steps "$STEPS"
    --max-length 256 --val-every "$VAL_EVERY" --val-epochs 3 --val-items 32 --val-lr 1e-3 --seed "$SEED" --device "$DEVICE")
CKL=(--epochs "$EPOCHS" --seeds "$SEED" --lr 1e-3 --batch-size 8 --max-length 128 --no-exact-match --device "$DEVICE")
ckl() { local name=$1; shift; metacl ckl run --model "$MODEL" --data "$WORLD" --strategy "$@" "${CKL[@]}" --out "$RUNS/ckl_$name"; }
for id in "$@"; do
  echo "=== $id $(date -u +%H:%M:%S)"
  case $id in
    refs) ckl finetune finetune
          ckl oracle oracle --oracle-data "$WORLD/tl.jsonl" "$WORLD/tl_val.jsonl"
          ckl salient_span salient_span; continue ;;
    table) runs=(); for d in "$RUNS"/ckl_*; do n=$(basename "$d"); runs+=("${n#ckl_}=$d"); done
           python experiments/taalm_closure.py --runs "${runs[@]}" --json "$RUNS/closure.json"; continue ;;
    A0) extra=() ;;                                            # the defaults (the reference of every ablation)
    A1) extra=(--inner-norm tokens) ;;                         # unnormalised weights: the total weight is learnable
    A2) extra=(--weight-head softplus) ;;                      # unbounded weights (CaMeLS), no saturated sigmoid
    A3) extra=(--weight-temperature 0.25) ;;                   # sharper weights, 4x gradient through the head
    A4) extra=(--inner-norm tokens --sparsity 0.1) ;;          # sparsity needs A1: with / sum(w) a global shrink is free
    A5) extra=(--inner-optimizer sgd --inner-lr 0.05 --learn-inner-lr) ;;  # linear inner step, learned rate
    A6) extra=(--max-length 128) ;;                            # meta-train on the deployment's window
    A7) extra=(--meta-batch 16) ;;                             # TAALM's meta-batch
    A8) extra=(--inner-steps 4 --inner-lr 1e-2) ;;             # a longer, larger inner loop
    A9) extra=(--retention 1.0) ;;                             # the retention variant (NF)
    A10) extra=(--span-supervision 1.0) ;;                     # + BCE towards the meta-train answer spans
    A11) extra=(--span-supervision 1.0 --retention 1.0) ;;     # A10 with the retention term
    A12) extra=(--span-supervision 1.0 --span-share 1.0) ;;    # A10 + the answer's share of the weight mass
    A13) extra=(--span-supervision 1.0 --span-share 1.0 --span-warmup 300 --steps 300 --outer-lr 3e-4 --val-every 100) ;;  # span terms only (supervised)
    A15) extra=(--span-supervision 1.0 --span-share 1.0 --span-warmup 1000 --steps 1000 --outer-lr 3e-4 --val-every 250) ;;  # A13, 1000 steps
    A16) extra=(--span-supervision 1.0 --span-share 1.0 --span-warmup 300 --steps 400 --outer-lr 3e-4 --val-every 100 --retention 1.0) ;;  # A13, then 100 bilevel steps with the retention term
    A17) extra=(--span-supervision 1.0 --span-share 1.0 --span-warmup 1000 --steps 1000 --outer-lr 3e-4 --val-every 250 --data "${PLUS:?PLUS=folder with more meta_train pairs}") ;;  # A15 on 14x the meta-train pairs (fresh worlds)
    A14) extra=(--span-supervision 1.0 --span-share 1.0 --span-warmup 300 --steps 360 --outer-lr 3e-4 --val-every 60) ;;   # A13, then 60 bilevel steps
    *) echo "unknown ablation $id" >&2; exit 2 ;;
  esac
  metacl meta-train token-weighting --model "$MODEL" --data "$WORLD" --out "$RUNS/tw_$id" "${MT[@]}" "${extra[@]}" \
    ${RESUME:+--resume}
  python -c "import json,sys; s=json.load(open(sys.argv[1])); print('best_is_untrained', s.get('best_is_untrained'))" \
    "$RUNS/tw_$id/summary.json"
  [ -n "${NO_CKL:-}" ] || ckl "$id" taalm --taalm-predictor "$RUNS/tw_$id/best"
done
