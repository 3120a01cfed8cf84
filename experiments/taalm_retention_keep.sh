#!/usr/bin/env bash
# Issue 19's retention variant, one hypothesis: every retention method tried so far (mix_review, replay, ewc)
# competes with the weighted NLL on the very tokens the weighter learns, so each NF point costs TL. LwF with
# the complement mask (`--strategy taalm lwf --lwf-tokens complement`) holds the task-start predictions only
# where the weighter's weight is low (the text around the facts), weighting each position by 1 - w, and leaves
# the answer tokens to the NLL; it should buy NF at a smaller TL cost. Candidates and rule declared before any
# run (2026-12-04):
#   lwf_all_1   taalm + lwf alpha 1, every position (the control: does the complement matter?)
#   lwfc_0.3    taalm + lwf alpha 0.3, complement
#   lwfc_1      taalm + lwf alpha 1, complement
#   lwfc_3      taalm + lwf alpha 3, complement
# chosen on the validation world (seed 1, its own LM and A13 weighter: RUNS/vw, built by
# `experiments/taalm_retention_v2.sh RUNS vw_build`; 3 seeds; its TL and NF as the scores) by the rule of the
# earlier sessions, `cheapest` (experiments/taalm_retention_choose.py: NF gain over plain taalm >= 0.10, then
# the highest TL ratio). The chosen one then runs on the test world with 6 seeds (0-5), declared now because
# 3 seeds proved too few last time (taalm_v2.md, "Fourth LM build": 4.1% cost on seeds 0-2, 8.8% on 3-5).
#
# Usage: experiments/taalm_retention_keep.sh RUNS_DIR STAGE...
#   vw_tune   the candidates on RUNS/vw (plain taalm: RUNS/ret_late_vw/taalm, same settings, copied in)
#   vw_choose RUNS/ret_keep_vw/choice.json (and the max_nf rule's choice, for the record)
#   rows      the chosen candidate on the test world (RUNS/w2, weighter RUNS/taalm_v2_abl/tw_A13), seeds 0 1 2
#             -> RUNS/w2/world_v2_d3-5_taalm_retention_keep, and seeds 3 4 5 -> RUNS/seeds345/taalm_retention_keep
#   table     the 3-seed table (with FINETUNE, ORACLE: run folders of the same settings) -> $TABLE, and the 6-seed
#             one -> $TABLE/six_seeds
set -euo pipefail
RUNS=${1:?runs dir}; shift
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TQDM_DISABLE=1
W2=$RUNS/w2/world_e200_d3-5; W2LM=$RUNS/w2/lm_small_s0; P=$RUNS/taalm_v2_abl/tw_A13/best
COMMON=(--epochs 8 --lr 1e-3 --batch-size 8 --max-length 256 --no-exact-match --device cpu)
declare -A CAND=(
  [lwf_all_1]="taalm lwf --lwf-alpha 1"
  [lwfc_0.3]="taalm lwf --lwf-tokens complement --lwf-alpha 0.3"
  [lwfc_1]="taalm lwf --lwf-tokens complement --lwf-alpha 1"
  [lwfc_3]="taalm lwf --lwf-tokens complement --lwf-alpha 3"
)
T=$RUNS/ret_keep_vw
once() { local out=$1; shift; [ -f "$out/summary.json" ] || metacl ckl run "$@" --out "$out" > "$out.log" 2>&1; }
chosen() { python -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen'])" "$T/choice.json"; }
TABLE=${TABLE:-docs/results/taalm_v2_table_lm4/keep}
for stage in "$@"; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    vw_tune)
      mkdir -p "$T"; [ -d "$T/taalm" ] || cp -r "$RUNS/ret_late_vw/taalm" "$T/taalm"
      VW=(--model "$RUNS/vw/lm" --data "$RUNS/vw/world" "${COMMON[@]}" --seeds 0 1 2 --taalm-predictor "$RUNS/vw/tw_A13/best")
      for name in $(printf '%s\n' "${!CAND[@]}" | sort); do
        read -r -a s <<< "${CAND[$name]}"
        once "$T/$name" "${VW[@]}" --strategy "${s[@]}"
        echo "  $name done $(date -u +%H:%M:%S)"
      done ;;
    vw_choose)
      python experiments/taalm_retention_choose.py "$T" --metric tl_acc --rule cheapest --json "$T/choice.json"
      python experiments/taalm_retention_choose.py "$T" --metric tl_acc --rule max_nf --json "$T/choice_max_nf.json" ;;
    rows)
      name=$(chosen); [ "$name" != None ] || { echo "no candidate met the rule: nothing to run on the test world" >&2; exit 1; }
      read -r -a s <<< "${CAND[$name]}"
      S=(--model "$W2LM" --data "$W2" "${COMMON[@]}" --strategy "${s[@]}" --taalm-predictor "$P")
      once "$RUNS/w2/world_v2_d3-5_taalm_retention_keep" "${S[@]}" --seeds 0 1 2
      once "$RUNS/seeds345/taalm_retention_keep" "${S[@]}" --seeds 3 4 5 ;;
    table)
      python experiments/taalm_table.py --epochs 8 --out "$TABLE" finetune="${FINETUNE:?}" oracle="${ORACLE:?}" \
        random=$RUNS/w2/world_v2_d3-5_random_A13 taalm=$RUNS/w2/world_v2_d3-5_taalm_A13 \
        taalm_retention=$RUNS/w2/world_v2_d3-5_taalm_retention_keep
      python experiments/taalm_closure.py "$TABLE/summary.json" --json "$TABLE/closure.json"
      # the 6 seeds declared in the header: 0-2 above plus 3-5 (finetune, oracle and taalm of seeds 3-5 are the
      # committed runs of taalm_v2_table_lm4/seeds345/command.sh, same flags)
      python experiments/taalm_table.py --epochs 8 --out "$TABLE/six_seeds" \
        finetune="${FINETUNE:?}",$RUNS/seeds345/finetune oracle="${ORACLE:?}",$RUNS/seeds345/oracle \
        taalm=$RUNS/w2/world_v2_d3-5_taalm_A13,$RUNS/seeds345/taalm \
        taalm_retention=$RUNS/w2/world_v2_d3-5_taalm_retention_keep,$RUNS/seeds345/taalm_retention_keep
      python experiments/taalm_closure.py "$TABLE/six_seeds/summary.json" --json "$TABLE/six_seeds/closure.json" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
echo "=== done $(date -u +%H:%M:%S)"
