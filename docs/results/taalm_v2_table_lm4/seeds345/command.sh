#!/usr/bin/env bash
set -euo pipefail
# run from the repository root (as run on 2026-12-04); the rows of ../ are seeds 0 1 2 of the same flags
export OMP_NUM_THREADS=2 TQDM_DISABLE=1
W=runs/w2/world_e200_d3-5; P=runs/taalm_v2_abl/tw_A13/best
S=(--model runs/w2/lm_small_s0 --data $W --epochs 8 --lr 1e-3 --batch-size 8 --max-length 256 --no-exact-match --device cpu --seeds 3 4 5)
o=runs/seeds345; mkdir -p $o
metacl ckl run "${S[@]}" --strategy finetune --out $o/finetune > $o/finetune.log 2>&1; echo "finetune $(date -u +%T)"
metacl ckl run "${S[@]}" --strategy oracle --oracle-data $W/tl.jsonl $W/tl_val.jsonl --out $o/oracle > $o/oracle.log 2>&1; echo "oracle $(date -u +%T)"
metacl ckl run "${S[@]}" --strategy taalm --taalm-predictor $P --out $o/taalm > $o/taalm.log 2>&1; echo "taalm $(date -u +%T)"
metacl ckl run "${S[@]}" --strategy taalm mix_review --mix-review-ratio 0.5 --mix-review-decay 1.0 --taalm-predictor $P --out $o/taalm_retention > $o/taalm_retention.log 2>&1; echo "ret $(date -u +%T)"
python experiments/taalm_table.py --epochs 8 --out docs/results/taalm_v2_table_lm4/seeds345 finetune=$o/finetune oracle=$o/oracle taalm=$o/taalm taalm_retention=$o/taalm_retention
echo "=== chain3 done $(date -u +%T)"
