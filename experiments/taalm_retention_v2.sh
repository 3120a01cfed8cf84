#!/usr/bin/env bash
# Issue 19's retention variant on world v2, chosen on validation data only: the table's weighter
# (A13) composed with one retention strategy (ewc / mix_review / replay, a declared grid of one
# option each), every candidate run with the world's *meta_nf* facts as its NF set (old facts that are
# not the NF test probes) and scored at its honest epoch (chosen on tl_val). Rule, fixed before any
# run (experiments/taalm_retention_choose.py): among candidates whose honest tl_val is >= 95% of plain
# taalm's, the largest NF-validation gain over plain taalm; then that one config on the real NF, 3 seeds.
#
# Usage: experiments/taalm_retention_v2.sh RUNS_DIR STAGE...
#   tune    seeds $TUNE_SEEDS ("0 1") of taalm and each candidate with --nf meta_nf.jsonl -> RUNS/ret_tune/*
#   choose  RUNS/ret_tune/choice.json (+ docs/results/taalm_v2_table/retention_choice.json)
#   rows    the chosen candidate, seeds 0 1 2, the world-v2 table settings -> RUNS/w2/world_v2_d3-5_taalm_retention
#   vw_cheapest  the committed validation-world candidates re-read with rule `cheapest` (highest TL ratio among
#           NF gain >= 0.10; set 2026-12-03 after max_nf's choice cost 9.9% TL on test) -> its choice JSON, then that
#           config on the test world, seeds 0 1 2 -> RUNS/w2/world_v2_d3-5_taalm_retention_cheapest
#   lm2_rows / lm2_table  finetune, oracle, random, taalm on the rebuilt LM -> docs/results/taalm_v2_table_lm2/
#   vw_build / vw_tune / vw_choose / vw_rows: the same grid and rule on a separate *validation world* (seed 1,
#           its own base LM and A13 weighter, 3 seeds, its 100 TL facts as the TL score instead of the test
#           world's 20 tl_val facts) -> RUNS/vw, RUNS/ret_tune_vw, then the choice on the test world
#           -> RUNS/w2/world_v2_d3-5_taalm_retention_vw
# Needs RUNS/w2/{world_e200_d3-5,lm_small_s0} and RUNS/taalm_v2_abl/tw_A13 (experiments/taalm_v2_tables.sh w2_meta).
set -euo pipefail
RUNS=${1:?runs dir}; shift
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TQDM_DISABLE=1
W2=$RUNS/w2/world_e200_d3-5; W2LM=$RUNS/w2/lm_small_s0; P=$RUNS/taalm_v2_abl/tw_A13/best
TUNE_SEEDS=${TUNE_SEEDS:-"0 1"}
SET=(--model "$W2LM" --data "$W2" --epochs 8 --lr 1e-3 --batch-size 8 --max-length 256 --no-exact-match --device cpu)
declare -A CAND=(
  [ewc_100]="taalm ewc --ewc-lambda 100" [ewc_300]="taalm ewc --ewc-lambda 300" [ewc_1000]="taalm ewc --ewc-lambda 1000"
  [mix_0.25]="taalm mix_review --mix-review-ratio 0.25" [mix_0.5]="taalm mix_review --mix-review-ratio 0.5"
  [mix_1.0]="taalm mix_review --mix-review-ratio 1.0"
  [replay_1]="taalm replay --replay-per-batch 1" [replay_2]="taalm replay --replay-per-batch 2"
  [replay_4]="taalm replay --replay-per-batch 4"
)
# grid OUT FLAGS...: plain taalm and every candidate with FLAGS (finished runs are skipped)
grid() {
  local T=$1; shift; mkdir -p "$T"
  [ -f "$T/taalm/summary.json" ] || metacl ckl run "$@" --strategy taalm --out "$T/taalm" > "$T/taalm.log" 2>&1
  for name in $(printf '%s\n' "${!CAND[@]}" | sort); do
    read -r -a s <<< "${CAND[$name]}"
    [ -f "$T/$name/summary.json" ] || metacl ckl run "$@" --strategy "${s[@]}" --out "$T/$name" > "$T/$name.log" 2>&1
    echo "  $name done $(date -u +%H:%M:%S)"
  done
}
# chosen CHOICE_JSON OUT: the chosen candidate on the test world, seeds 0 1 2
chosen() {
  local name; name=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen'])" "$1")
  read -r -a s <<< "${CAND[$name]}"
  metacl ckl run "${SET[@]}" --seeds 0 1 2 --strategy "${s[@]}" --taalm-predictor "$P" --out "$2" > "$2.log" 2>&1
}
D=docs/results/taalm_v2_table_lm2
# TAG names the base-LM build the lm2_* rows ran on (each CPU gives the same command other weights),
# TABLE where lm2_table writes: TAG=lm3 TABLE=docs/results/taalm_v2_table_lm3 for the 2026-12-03 build
TAG=${TAG:-lm2}; TABLE=${TABLE:-$D}
for stage in "$@"; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    tune) grid "$RUNS/ret_tune" "${SET[@]}" --seeds $TUNE_SEEDS --nf "$W2/meta_nf.jsonl" --taalm-predictor "$P" ;;
    choose)
      python experiments/taalm_retention_choose.py "$RUNS/ret_tune" --json "$RUNS/ret_tune/choice.json"
      mkdir -p $D && cp "$RUNS/ret_tune/choice.json" $D/retention_choice_tlval.json ;;
    rows) chosen "$RUNS/ret_tune/choice.json" "$RUNS/w2/world_v2_d3-5_taalm_retention" ;;
    vw_build)
      VW=$RUNS/vw; mkdir -p "$VW"
      [ -f "$VW/world/world.json" ] || metacl data world --entities 200 --seed 1 --distractors 3 5 --out "$VW/world"
      [ -f "$VW/lm/pretrain.json" ] || metacl pretrain --corpus "$VW/world/pretrain_corpus.jsonl" --size small --seed 0 \
        --out "$VW/lm" > "$VW/lm.log" 2>&1
      metacl meta-train token-weighting --model "$VW/lm" --data "$VW/world" --out "$VW/tw_A13" --inner-steps 2 \
        --inner-optimizer adamw --inner-lr 1e-3 --meta-batch 4 --max-length 256 --val-epochs 3 --val-items 32 --val-lr 1e-3 \
        --seed 0 --device cpu --span-supervision 1.0 --span-share 1.0 --span-warmup 300 --steps 300 --outer-lr 3e-4 \
        --val-every 100 > "$VW/tw_A13.log" 2>&1 ;;
    vw_tune)
      grid "$RUNS/ret_tune_vw" --model "$RUNS/vw/lm" --data "$RUNS/vw/world" --epochs 8 --lr 1e-3 --batch-size 8 \
        --max-length 256 --no-exact-match --device cpu --seeds 0 1 2 --taalm-predictor "$RUNS/vw/tw_A13/best" ;;
    vw_choose)
      python experiments/taalm_retention_choose.py "$RUNS/ret_tune_vw" --metric tl_acc --json "$RUNS/ret_tune_vw/choice.json"
      mkdir -p $D && cp "$RUNS/ret_tune_vw/choice.json" $D/retention_choice_valworld.json ;;
    vw_rows) chosen "${VW_CHOICE:-$RUNS/ret_tune_vw/choice.json}" "$RUNS/w2/world_v2_d3-5_taalm_retention_vw" ;;  # VW_CHOICE: e.g. the committed JSON
    vw_cheapest)
      python experiments/taalm_retention_choose.py --from-json $D/retention_choice_valworld.json --rule cheapest \
        --json $D/retention_choice_valworld_cheapest.json
      out=$RUNS/w2/world_v2_d3-5_taalm_retention_cheapest_$TAG
      [ -f "$out/summary.json" ] || chosen $D/retention_choice_valworld_cheapest.json "$out" ;;
    lm2_rows)  # the reference rows on the rebuilt LM (RUNS/w2/lm_small_s0), as run on 2026-12-02
      for r in finetune oracle random taalm_A13; do
        case $r in
          finetune) st=(finetune) ;; oracle) st=(oracle --oracle-data "$W2/tl.jsonl" "$W2/tl_val.jsonl") ;;
          random) st=(random --random-predictor "$P") ;; taalm_A13) st=(taalm --taalm-predictor "$P") ;;
        esac
        out=$RUNS/w2/world_v2_d3-5_${r}_$TAG
        [ -f "$out/summary.json" ] || metacl ckl run "${SET[@]}" --seeds 0 1 2 --strategy "${st[@]}" --out "$out" > "$out.log" 2>&1
      done ;;
    lm2_table)
      rows=(finetune=$RUNS/w2/world_v2_d3-5_finetune_$TAG oracle=$RUNS/w2/world_v2_d3-5_oracle_$TAG
            random=$RUNS/w2/world_v2_d3-5_random_$TAG taalm=$RUNS/w2/world_v2_d3-5_taalm_A13_$TAG)
      for r in taalm_retention=world_v2_d3-5_taalm_retention_vw taalm_retention_tlval_choice=world_v2_d3-5_taalm_retention \
               taalm_retention_cheapest=world_v2_d3-5_taalm_retention_cheapest_$TAG; do
        [ -f "$RUNS/w2/${r#*=}/summary.json" ] && rows+=("${r%%=*}=$RUNS/w2/${r#*=}")
      done
      python experiments/taalm_table.py --epochs 8 --out "$TABLE" "${rows[@]}"
      python experiments/taalm_closure.py "$TABLE/summary.json" --json "$TABLE/closure.json" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
echo "=== done $(date -u +%H:%M:%S)"
