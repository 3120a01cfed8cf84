#!/usr/bin/env bash
# Issue 19, a second LM for the fourth build's recipe: the A17 weighter and the taalm + lwf-complement retention
# variant on the validation world (world seed 1, its own base LM; RUNS/vw from experiments/taalm_retention_v2.sh
# vw_build). One build of the base LM did not settle the closure before (1.05 / 0.76 / 0.93 / 0.51 with A13),
# so the same recipe is rerun, unchanged, on another LM. Declared 2026-12-04 before any run of this script.
# Caveats fixed in advance: this world's TL scores chose the retention variant (lwfc_0.3, with A13), so that row
# is not held out here; the A17 rows are (nothing on this world was chosen with A17). A17's extra pairs come from
# fresh worlds of seeds 7-12, because seed 1 *is* this world (taalm_detector_lm4.sh used seeds 1-6).
#
# Usage: experiments/taalm_a17_valworld.sh RUNS_DIR STAGE...   (plus meta rows table)
set -euo pipefail
RUNS=${1:?runs dir}; shift
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TQDM_DISABLE=1
VW=$RUNS/vw; M="python -m metacl"; P=$RUNS/vw_abl/tw_A17/best; O=$RUNS/vw_rows
S=(--model "$VW/lm" --data "$VW/world" --epochs 8 --lr 1e-3 --batch-size 8 --max-length 256 --no-exact-match --device cpu --seeds 0 1 2)
once() { local out=$1; shift; [ -f "$out/summary.json" ] || metacl ckl run "$@" --out "$out" > "$out.log" 2>&1; }
TABLE=${TABLE:-docs/results/taalm_v2_table_lm4/a17_valworld}
for stage in "$@"; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    plus)
      mkdir -p "$RUNS/vw_fresh" "$RUNS/vw_meta_plus"
      for s in 7 8 9 10 11 12; do [ -f "$RUNS/vw_fresh/world_s$s/world.json" ] || $M data world --entities 200 --seed $s \
        --distractors 3 5 --out "$RUNS/vw_fresh/world_s$s" > /dev/null; done
      cat "$VW/world/meta_train.jsonl" "$RUNS"/vw_fresh/world_s*/meta_train.jsonl "$RUNS"/vw_fresh/world_s*/tl.jsonl \
        "$RUNS"/vw_fresh/world_s*/tl_val.jsonl > "$RUNS/vw_meta_plus/meta_train.jsonl"
      cp "$VW/world/meta_val.jsonl" "$VW/world/meta_nf.jsonl" "$RUNS/vw_meta_plus/"
      wc -l "$RUNS/vw_meta_plus/meta_train.jsonl" ;;
    meta)
      NO_CKL=1 PLUS=$RUNS/vw_meta_plus experiments/taalm_v2_ablation.sh "$VW/lm" "$VW/world" "$RUNS/vw_abl" A17 ;;
    rows)
      mkdir -p "$O"
      once "$O/finetune" "${S[@]}" --strategy finetune
      once "$O/oracle" "${S[@]}" --strategy oracle --oracle-data "$VW/world/tl.jsonl" "$VW/world/tl_val.jsonl"
      once "$O/taalm_A17" "${S[@]}" --strategy taalm --taalm-predictor "$P"
      once "$O/random_A17" "${S[@]}" --strategy random --random-predictor "$P"
      once "$O/taalm_retention_A17" "${S[@]}" --strategy taalm lwf --lwf-tokens complement --lwf-alpha 0.3 --taalm-predictor "$P" ;;
    table)
      python experiments/taalm_table.py --epochs 8 --out "$TABLE" finetune=$O/finetune oracle=$O/oracle \
        random=$O/random_A17 taalm_A13=$RUNS/ret_late_vw/taalm taalm=$O/taalm_A17 taalm_retention=$O/taalm_retention_A17
      python experiments/taalm_closure.py "$TABLE/summary.json" --json "$TABLE/closure.json" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
echo "=== done $(date -u +%H:%M:%S)"
