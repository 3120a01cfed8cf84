#!/usr/bin/env bash
# Issue 19's tables: the token weighter (span-supervised warm start, ablation A13 of
# docs/results/taalm_v2_plan.md) against finetune / oracle / random / salient_span, 3 seeds, honest
# protocol first, on world v2 and on the official LAMA-ckl files.
#
# Usage: experiments/taalm_v2_tables.sh RUNS_DIR STAGE...
#   w2_meta        meta-train the world-v2 weighter: experiments/taalm_v2_ablation.sh ... A13 (and A16, the
#                  retention variant: A13's 300 supervised steps, then 100 bilevel steps with --retention 1.0;
#                  A15, 1000 supervised steps) -> RUNS/taalm_v2_abl/tw_A13, tw_A15, tw_A16
#   w2_rows        CKL rows with A13's weighter: taalm, random (its own weights shuffled within each document),
#                  taalm+ewc, taalm+replay; and A15, A17, A16's step-400 weighter (for the record) at the world-v2 table settings
#                  (experiments/world_v2.sh: 8 epochs, lr 1e-3, batch 8, max length 256, seeds 0 1 2)
#   w2_table       docs/results/taalm_v2_table/{summary.json,table.md,plot.png,closure.json}; finetune, oracle and
#                  salient_span are the committed world-v2 rows (docs/results/world_v2_d3-5_*), same settings
#   off_meta       meta-train the official weighter FOR the official base LM on the official meta split
#                  (RUNS/official_meta: invariant facts sharing nothing with TL or NF): A13's flags, 512 tokens,
#                  no validation (the only NF probes of this track are the test's), so `last/` = `best/`
#   off_rows       CKL rows taalm and random on the 500 official TL items, with the settings of
#                  experiments/official_v2.sh (4 epochs, lr 1e-3, batch 8, max length 512, old corpus)
#   off_table      docs/results/taalm_official_v2_table/ (finetune, oracle, salient_span: docs/results/official_v2_*)
#   off_cf_meta    cross-fitted weighters on the TL items themselves (metacl.data.crossfit: 2 folds dealt per
#                  relation, same document -> same fold; fold k's weighter is meta-trained on the other fold only and
#                  weights only fold k's documents), A13's flags, 512 tokens, no validation -> RUNS/official_crossfit
#   off_cf_rows    CKL rows taalm and random with the cross-fit folder as predictor, official_v2.sh's settings
#   off_cf_f5_final  after the seed-0 ablations (SEEDS=0 CF_FOLDS=5 CF_TAG=_f5 ... off_cf_meta off_cf_rows): the chosen
#                  5-fold weighters on seeds 1 2 (later --seeds wins) and their random control on SEEDS (0 1 2)
#   off_cf_table   adds them to docs/results/taalm_official_v2_table/ as taalm_crossfit / random_crossfit
# Env: SEEDS ("0 1 2"), OMP_NUM_THREADS (2); cross-fit ablations: CF_FOLDS (2), CF_STEPS (300), CF_PLUS (non-empty:
#      add the official meta split's pairs to every fold), CF_TAG (suffix of the folders; a tagged run skips random).
set -euo pipefail
RUNS=${1:?runs dir}; shift
SEEDS=${SEEDS:-"0 1 2"}
CF_FOLDS=${CF_FOLDS:-2}; CF_STEPS=${CF_STEPS:-300}; CF_TAG=${CF_TAG:-}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TQDM_DISABLE=1
W2=$RUNS/w2/world_e200_d3-5; W2LM=$RUNS/w2/lm_small_s0
OFF=${DATA:-../shared/data/lama_ckl}; OFFLM=$RUNS/official_lm
M="python -m metacl"
W2CKL=(--model "$W2LM" --data "$W2" --epochs 8 --seeds $SEEDS --lr 1e-3 --batch-size 8 --max-length 256 --no-exact-match --device cpu)
OFFCKL=(--model "$OFFLM/model" --data "$OFF" --old-corpus "$OFFLM/official_nf_corpus.jsonl" --epochs 4 --seeds $SEEDS --lr 1e-3
        --batch-size 8 --max-length 512 --no-exact-match --device cpu)
row() { local out=$1; shift; $M ckl run "$@" --out "$out" > "$out.log" 2>&1; }
for stage in "$@"; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    w2_meta) experiments/taalm_v2_ablation.sh "$W2LM" "$W2" "$RUNS/taalm_v2_abl" A13 A15 A16
             # A17: 6 fresh worlds' pairs (never the test world's TL) + this world's meta split
             mkdir -p "$RUNS/w2_fresh" "$RUNS/w2_meta_plus"
             for s in 1 2 3 4 5 6; do [ -f "$RUNS/w2_fresh/world_s$s/world.json" ] || $M data world --entities 200 --seed $s \
               --distractors 3 5 --out "$RUNS/w2_fresh/world_s$s" > /dev/null; done
             cat "$W2/meta_train.jsonl" "$RUNS"/w2_fresh/world_s*/meta_train.jsonl "$RUNS"/w2_fresh/world_s*/tl.jsonl \
               "$RUNS"/w2_fresh/world_s*/tl_val.jsonl > "$RUNS/w2_meta_plus/meta_train.jsonl"
             cp "$W2/meta_val.jsonl" "$W2/meta_nf.jsonl" "$RUNS/w2_meta_plus/"
             PLUS=$RUNS/w2_meta_plus experiments/taalm_v2_ablation.sh "$W2LM" "$W2" "$RUNS/taalm_v2_abl" A17 ;;
    w2_rows)
      P=$RUNS/taalm_v2_abl/tw_A13/best
      row "$RUNS/w2/world_v2_d3-5_taalm_A13" "${W2CKL[@]}" --strategy taalm --taalm-predictor "$P"
      row "$RUNS/w2/world_v2_d3-5_random_A13" "${W2CKL[@]}" --strategy random --random-predictor "$P"
      row "$RUNS/w2/world_v2_d3-5_taalm_A15" "${W2CKL[@]}" --strategy taalm --taalm-predictor "$RUNS/taalm_v2_abl/tw_A15/best"
      row "$RUNS/w2/world_v2_d3-5_taalm_A17" "${W2CKL[@]}" --strategy taalm --taalm-predictor "$RUNS/taalm_v2_abl/tw_A17/best"
      # the retention variants: A16's step-400 weighter (its best/ is A13's), and taalm composed with ewc / replay
      row "$RUNS/w2/world_v2_d3-5_taalm_A16last" "${W2CKL[@]}" --strategy taalm --taalm-predictor "$RUNS/taalm_v2_abl/tw_A16/last"
      row "$RUNS/w2/world_v2_d3-5_taalm_A13_ewc" "${W2CKL[@]}" --strategy taalm ewc --taalm-predictor "$RUNS/taalm_v2_abl/tw_A13/best"
      row "$RUNS/w2/world_v2_d3-5_taalm_A13_replay" "${W2CKL[@]}" --strategy taalm replay --taalm-predictor "$RUNS/taalm_v2_abl/tw_A13/best" ;;
    w2_table)
      D=docs/results/taalm_v2_table; mkdir -p $D
      python experiments/taalm_table.py --epochs 8 --out $D finetune=docs/results/world_v2_d3-5_finetune \
        oracle=docs/results/world_v2_d3-5_oracle salient_span=docs/results/world_v2_d3-5_salient_span \
        random=$RUNS/w2/world_v2_d3-5_random_A13 taalm=$RUNS/w2/world_v2_d3-5_taalm_A13 \
        taalm_retention_step400=$RUNS/w2/world_v2_d3-5_taalm_A16last taalm+ewc=$RUNS/w2/world_v2_d3-5_taalm_A13_ewc \
        taalm+replay=$RUNS/w2/world_v2_d3-5_taalm_A13_replay
      python experiments/taalm_closure.py $D/summary.json --json $D/closure.json
      python experiments/taalm_closure.py $D/summary.json --protocol paper --json $D/closure_paper.json
      for r in taalm_A13 random_A13 taalm_A15 taalm_A17 taalm_A16last taalm_A13_ewc taalm_A13_replay; do
        mkdir -p docs/results/world_v2_d3-5_$r
        cp $RUNS/w2/world_v2_d3-5_$r/{summary.json,table.md,plot.png,metrics.jsonl} docs/results/world_v2_d3-5_$r/
      done
      for a in A13 A15 A16; do cp "$RUNS/taalm_v2_abl/tw_$a/summary.json" "docs/results/taalm_v2_ablation/tw_${a}_summary.json"; done ;;
    off_meta)
      $M meta-train token-weighting --model "$OFFLM/model" --data "$RUNS/official_meta" --nf "$RUNS/official_meta/meta_val.jsonl" \
        --out "$RUNS/official_tw_A13" --inner-steps 2 --inner-optimizer adamw --inner-lr 1e-3 --meta-batch 4 --max-length 512 \
        --span-supervision 1.0 --span-share 1.0 --span-warmup 300 --steps 300 --outer-lr 3e-4 --val-every 0 --seed 0 --device cpu ;;
    off_rows)
      P=$RUNS/official_tw_A13/best
      row "$RUNS/official_v2_taalm_A13" "${OFFCKL[@]}" --strategy taalm --taalm-predictor "$P"
      row "$RUNS/official_v2_random_A13" "${OFFCKL[@]}" --strategy random --random-predictor "$P" ;;
    off_table)
      D=docs/results/taalm_official_v2_table; mkdir -p $D
      python experiments/taalm_table.py --epochs 4 --out $D finetune=docs/results/official_v2_finetune \
        oracle=docs/results/official_v2_oracle salient_span=docs/results/official_v2_salient_span \
        random=$RUNS/official_v2_random_A13 taalm=$RUNS/official_v2_taalm_A13
      python experiments/taalm_closure.py $D/summary.json --json $D/closure.json
      for r in taalm_A13 random_A13; do
        mkdir -p docs/results/official_v2_$r
        cp $RUNS/official_v2_$r/{summary.json,table.md,plot.png,metrics.jsonl} docs/results/official_v2_$r/
      done
      cp "$RUNS/official_tw_A13/summary.json" $D/tw_summary.json ;;
    off_cf_meta)
      CF=$RUNS/official_crossfit$CF_TAG
      $M data crossfit --data "$OFF/variant.jsonl" --folds "$CF_FOLDS" --seed 0 --out "$CF"
      for k in $(seq 0 $((CF_FOLDS - 1))); do
        if [ -n "${CF_PLUS:-}" ]; then  # + the official meta split's pairs (other relations) in every fold's meta-train
          cat "$RUNS/official_meta/meta_train.jsonl" >> "$CF/fold_$k/meta_train.jsonl"
        fi
        $M meta-train token-weighting --model "$OFFLM/model" --data "$CF/fold_$k" --nf "$CF/fold_$k/meta_val.jsonl" \
          --out "$CF/fold_$k/weighter" --inner-steps 2 --inner-optimizer adamw --inner-lr 1e-3 --meta-batch 4 --max-length 512 \
          --span-supervision 1.0 --span-share 1.0 --span-warmup "$CF_STEPS" --steps "$CF_STEPS" --outer-lr 3e-4 --val-every 0 \
          --seed 0 --device cpu > "$CF/fold_$k/meta_train.log" 2>&1
      done ;;
    off_cf_rows)
      P=$RUNS/official_crossfit$CF_TAG
      row "$RUNS/official_v2_taalm_crossfit$CF_TAG" "${OFFCKL[@]}" --strategy taalm --taalm-predictor "$P"
      [ -n "$CF_TAG" ] || row "$RUNS/official_v2_random_crossfit" "${OFFCKL[@]}" --strategy random --random-predictor "$P" ;;
    off_cf_f5_final)  # the ablation chosen on seed-0 tl_val (5 folds): seeds 1 2, and its random control
      row "$RUNS/official_v2_taalm_crossfit_f5_s12" "${OFFCKL[@]}" --seeds 1 2 --strategy taalm --taalm-predictor "$RUNS/official_crossfit_f5"
      row "$RUNS/official_v2_random_crossfit_f5" "${OFFCKL[@]}" --strategy random --random-predictor "$RUNS/official_crossfit_f5" ;;
    off_cf_table)
      D=docs/results/taalm_official_v2_table; mkdir -p $D
      python experiments/taalm_table.py --epochs 4 --out $D finetune=docs/results/official_v2_finetune \
        oracle=docs/results/official_v2_oracle salient_span=docs/results/official_v2_salient_span \
        random=docs/results/official_v2_random_A13 taalm=docs/results/official_v2_taalm_A13 \
        random_crossfit=$RUNS/official_v2_random_crossfit taalm_crossfit=$RUNS/official_v2_taalm_crossfit \
        taalm_crossfit_f5=$RUNS/official_v2_taalm_crossfit_f5,$RUNS/official_v2_taalm_crossfit_f5_s12 \
        random_crossfit_f5=$RUNS/official_v2_random_crossfit_f5
      python experiments/taalm_closure.py $D/summary.json --json $D/closure.json
      python experiments/taalm_closure.py $D/summary.json --protocol paper --json $D/closure_paper.json
      for r in taalm_crossfit random_crossfit; do
        mkdir -p docs/results/official_v2_$r
        cp $RUNS/official_v2_$r/{summary.json,table.md,plot.png,metrics.jsonl} docs/results/official_v2_$r/
      done
      mkdir -p $D/crossfit
      cp "$RUNS/official_crossfit/crossfit.json" $D/crossfit/
      for k in 0 1; do cp "$RUNS/official_crossfit/fold_$k/weighter/summary.json" $D/crossfit/tw_fold${k}_summary.json; done ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
echo "=== done $(date -u +%H:%M:%S)"
