#!/usr/bin/env bash
# Issue 19's retention variant, one hypothesis: mix_review's default decay (0.7 per epoch) removes the
# mixed-in pre-training text in exactly the late epochs that the honest protocol reads for taalm (its tl_val
# still rises at epoch 8), so NF is protected early, where it is not scored, and not late. A constant mix
# (decay 1.0) protects the scored epochs at a smaller ratio. Candidates and rule declared before any run:
#   mix_0.5     taalm + mix_review ratio 0.5, decay 0.7 (the earlier `cheapest` choice: the reference)
#   mix_0.25_d1 taalm + mix_review ratio 0.25, decay 1.0
#   mix_0.5_d1  taalm + mix_review ratio 0.5, decay 1.0
# chosen on a separate validation world (seed 1, its own LM and A13 weighter, 3 seeds, its TL as the TL
# score and its NF as the NF score) by rule `cheapest` (experiments/taalm_retention_choose.py: NF gain
# over plain taalm >= 0.10, then the highest TL ratio), then that one config on the test world, 3 seeds.
#
# Usage: experiments/taalm_retention_late.sh RUNS_DIR STAGE...
#   vw_tune   plain taalm and the candidates on RUNS/vw (built by `experiments/taalm_retention_v2.sh RUNS vw_build`)
#   vw_choose RUNS/ret_late_vw/choice.json
#   rows      on the test world (RUNS/w2, weighter RUNS/taalm_v2_abl/tw_A13): taalm, random (A13 shuffled) and
#             the chosen candidate, seeds 0 1 2 -> RUNS/w2/world_v2_d3-5_{taalm_A13,random_A13,taalm_retention_late}
#   salient   the salient_span control on the test world, seeds 0 1 2
#   table     with FINETUNE and ORACLE run folders of the same settings (and salient_span if run) -> $TABLE
set -euo pipefail
RUNS=${1:?runs dir}; shift
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TQDM_DISABLE=1
W2=$RUNS/w2/world_e200_d3-5; W2LM=$RUNS/w2/lm_small_s0; P=$RUNS/taalm_v2_abl/tw_A13/best
COMMON=(--epochs 8 --lr 1e-3 --batch-size 8 --max-length 256 --no-exact-match --device cpu --seeds 0 1 2)
declare -A CAND=(
  [mix_0.5]="taalm mix_review --mix-review-ratio 0.5 --mix-review-decay 0.7"
  [mix_0.25_d1]="taalm mix_review --mix-review-ratio 0.25 --mix-review-decay 1.0"
  [mix_0.5_d1]="taalm mix_review --mix-review-ratio 0.5 --mix-review-decay 1.0"
)
T=$RUNS/ret_late_vw
# once OUT FLAGS...: `ckl run FLAGS --out OUT` unless OUT already holds a finished run (log in OUT.log)
once() { local out=$1; shift; [ -f "$out/summary.json" ] || metacl ckl run "$@" --out "$out" > "$out.log" 2>&1; }
TABLE=${TABLE:-docs/results/taalm_v2_table_lm4}
for stage in "$@"; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    vw_tune)
      mkdir -p "$T"; VW=(--model "$RUNS/vw/lm" --data "$RUNS/vw/world" "${COMMON[@]}" --taalm-predictor "$RUNS/vw/tw_A13/best")
      once "$T/taalm" "${VW[@]}" --strategy taalm
      for name in $(printf '%s\n' "${!CAND[@]}" | sort); do
        read -r -a s <<< "${CAND[$name]}"
        once "$T/$name" "${VW[@]}" --strategy "${s[@]}"
        echo "  $name done $(date -u +%H:%M:%S)"
      done ;;
    vw_choose)
      python experiments/taalm_retention_choose.py "$T" --metric tl_acc --rule cheapest --json "$T/choice.json"
      python experiments/taalm_retention_choose.py "$T" --metric tl_acc --rule max_nf --json "$T/choice_max_nf.json" ;;
    rows)
      S=(--model "$W2LM" --data "$W2" "${COMMON[@]}")
      once "$RUNS/w2/world_v2_d3-5_taalm_A13" "${S[@]}" --strategy taalm --taalm-predictor "$P"
      once "$RUNS/w2/world_v2_d3-5_random_A13" "${S[@]}" --strategy random --random-predictor "$P"
      name=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen'])" "$T/choice.json")
      read -r -a s <<< "${CAND[$name]}"
      once "$RUNS/w2/world_v2_d3-5_taalm_retention_late" "${S[@]}" --strategy "${s[@]}" --taalm-predictor "$P" ;;
    salient)  # the salient-span control on the same LM and settings
      once "$RUNS/w2/world_v2_d3-5_salient_span" --model "$W2LM" --data "$W2" "${COMMON[@]}" --strategy salient_span ;;
    table)
      rows=(finetune="${FINETUNE:?}" oracle="${ORACLE:?}" random=$RUNS/w2/world_v2_d3-5_random_A13)
      [ -f "$RUNS/w2/world_v2_d3-5_salient_span/summary.json" ] && rows+=(salient_span=$RUNS/w2/world_v2_d3-5_salient_span)
      python experiments/taalm_table.py --epochs 8 --out "$TABLE" "${rows[@]}" taalm=$RUNS/w2/world_v2_d3-5_taalm_A13 \
        taalm_retention=$RUNS/w2/world_v2_d3-5_taalm_retention_late
      python experiments/taalm_closure.py "$TABLE/summary.json" --json "$TABLE/closure.json" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
echo "=== done $(date -u +%H:%M:%S)"
