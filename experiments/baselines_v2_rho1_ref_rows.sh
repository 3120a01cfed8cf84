#!/usr/bin/env bash
# rho1_ref (RHO-1 with the paper's kind of reference: an LM trained on curated in-distribution text) as a row
# of the world-v2 baselines protocol (issue 16). The reference is the base LM fine-tuned on the world's
# meta_train + meta_val evidence (other facts, the same document templates; no TL, tl_val or NF fact):
# experiments/rho1_reference.py. Every base-LM build differs per CPU, so the control rows (finetune, oracle)
# run again on this LM beside it, same protocol (experiments/baselines_v2.sh: tuned on tl_val, up to 30
# epochs, patience 3, all items, seeds 0 1 2), and rho1 (the task-start reference) last, for the pair.
#
# Usage: experiments/baselines_v2_rho1_ref_rows.sh RUNS   (RUNS/w2/{world_e200_d3-5,lm_small_s0})
set -euo pipefail
RUNS=${1:?RUNS (holds w2/world_e200_d3-5 and w2/lm_small_s0)}
W=$RUNS/w2/world_e200_d3-5; M=$RUNS/w2/lm_small_s0; REF=$RUNS/w2/rho1_ref_meta
B="--max-length 256 --batch-size 8 --no-exact-match --device cpu"
export METACL=${METACL:-python -m metacl} DOCS=${DOCS:-docs/results/baselines_v2_rho1_ref_table} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
S=experiments/baselines_v2.sh
T=$RUNS/bv2r/baselines_v2
ROWS=${ROWS:-"finetune rho1_ref oracle rho1"}
[ -f "$REF/reference.json" ] || python experiments/rho1_reference.py --model "$M" \
  --docs "$W/meta_train.jsonl" "$W/meta_val.jsonl" --out "$REF"
mkdir -p "$DOCS" && cp "$REF/reference.json" "$DOCS/reference.json"
for r in $ROWS; do
  case $r in
    oracle)   x="--oracle-data $W/tl.jsonl $W/tl_val.jsonl" ;;
    rho1_ref) x="--rho1-ref-model $REF" ;;
    *)        x="" ;;
  esac
  EXTRA="$B $x" bash $S "$RUNS/bv2r" "$W" "$M" baselines_v2 "$r"
done
finals=(); for r in $ROWS; do finals+=("$T/$r/final"); done
$METACL ckl compare "${finals[@]}" --out "$DOCS"
python experiments/baselines_v2_report.py "$DOCS" --json "$DOCS/rows.json" > "$DOCS/rows.md"
{ echo "# written by experiments/baselines_v2_rho1_ref_rows.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "experiments/baselines_v2_rho1_ref_rows.sh $RUNS  (OMP_NUM_THREADS=$OMP_NUM_THREADS; rows: $ROWS)"
  echo "reference: python experiments/rho1_reference.py --model $M --docs $W/meta_train.jsonl $W/meta_val.jsonl --out $REF"
  echo "each row: experiments/baselines_v2.sh with its defaults (LRS=3e-4,1e-3,3e-3 EPOCHS=30 PATIENCE=3 SEEDS=\"0 1 2\" TUNE_SEEDS=0) and EXTRA=\"$B\" (+ --oracle-data for oracle, --rho1-ref-model for rho1_ref)"
} > "$DOCS/command.txt"
echo "wrote $DOCS/{table.md,plot.png,rows.json,rows.md,command.txt,reference.json}"
