#!/usr/bin/env bash
# Issue 15's table: the learned optimizer against a tuned AdamW on world v2 (docs/results/lo_v2_table/).
#
# Usage: experiments/lo_v2_table.sh STAGE...   (RUNS=runs by default; stages run in the order given)
#   meta          meta-train the optimizer on the `lm2` family (tiny Llamas of 3 sizes on a world v2 of
#                 seed 11: neither the table's world nor its base LM is ever seen) -> $RUNS/lo_lm2
#   init          the untrained network of the same config (the `random` control) -> $RUNS/lo_lm2_init
#   adamw         finetune + AdamW, lr tuned on tl_val over 3e-4 / 1e-3 / 3e-3 (seed 0), then seeds 0 1 2
#   learned       finetune + the learned optimizer, its step multiplier tuned on tl_val over 0.5 / 1 / 2 / 4 / 8
#   random        finetune + the untrained network, the same grid (what meta-training changed)
#   replay        replay + AdamW at adamw's chosen lr, replay_per_batch tuned over 2 / 4 / 8
#   oracle        oracle token weights + AdamW at adamw's chosen lr (the benchmark's headroom)
#   ewc, lwf      for the equal-TL frontier only (experiments/lo_v2_frontier.py): ewc_lambda over 100 / 1000 / 10000,
#                 lwf_alpha over 0.5 / 1 / 2, at adamw's chosen lr, seed 0 (the frontier reads the tuning seed only)
#   tw            the token weighter for the learned+taalm row ($RUNS/taalm_v2_abl/tw_A13, as in issue 19's table)
#   learned_taalm taalm (that weighter) + the learned optimizer at learned's chosen multiplier
#   table         experiments/lo_v2_report.py -> docs/results/lo_v2_table/
# Every row: world v2 e200 (3-5 distractors) with the rebuilt small LM (RUNS/w2/{world_e200_d3-5,lm_small_s0},
# built by the commands in docs/results/taalm_v2_table_lm2/base_lm/pretrain.json), 8 epochs, batch 8,
# 256 tokens, seeds 0 1 2, honest protocol (epoch chosen on tl_val) first; tuning sees tl_val only
# (`metacl ckl tune`, the grid and the choice in each stage's tune.json).
set -euo pipefail
RUNS=${RUNS:-runs}
W=$RUNS/w2/world_e200_d3-5; LM=$RUNS/w2/lm_small_s0; T=$RUNS/lo_v2
# LO: the meta-trained weights (LO=default: the shipped default, bit for bit $RUNS/lo_lm2 of the `meta` stage)
LO=${LO:-$RUNS/lo_lm2}
LO_STEPS=${LO_STEPS:-400}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SET=(--model "$LM" --data "$W" --epochs 8 --batch-size 8 --max-length 256 --no-exact-match --device cpu)
TUNE=(--seeds 0 --then-seeds 0 1 2)
# the meta-training command; `init` saves the same config untrained
META=(--family lm2 --head linear --anchor-start --plasticity 1.0 --plasticity-lr 1e-3 --baseline-lr 1e-3 --init-lr 1e-3
      --steps "$LO_STEPS" --inner-steps 16 --tasks-per-episode 2 --meta-lr 3e-3 --seed 0 --ckpt-every 10
      --eval-episodes 6 --no-progress)
chosen() {  # chosen() TUNE_DIR KEY: the value tune chose for KEY
  python -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen_values'][sys.argv[2]])" "$1/tune.json" "$2"
}
for stage in "$@"; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    meta) metacl meta-train optimizer --out "$LO" "${META[@]}" ${RESUME:+--resume} ;;
    init) python - "$RUNS/lo_lm2_init" <<'EOF'
import sys
from metacl.optim import network as nw
from metacl.optim.learned import save_meta
net = nw.NetConfig(init_lr=1e-3, head="linear", anchor_start=True)
save_meta(sys.argv[1], nw.init_meta(net, 0), net, info={"note": "untrained: linear head, anchor_start, init_lr 1e-3, seed 0"})
EOF
          ;;
    adamw)   metacl ckl tune "${SET[@]}" --strategy finetune --grid lr=3e-4,1e-3,3e-3 "${TUNE[@]}" --out "$T/adamw" ;;
    learned) metacl ckl tune "${SET[@]}" --strategy finetune --optimizer learned --optimizer-path "$LO" \
               --grid learned_lr=0.5,1,2,4,8 "${TUNE[@]}" --out "$T/learned" ;;
    random)  metacl ckl tune "${SET[@]}" --strategy finetune --optimizer learned --optimizer-path "$RUNS/lo_lm2_init" \
               --grid learned_lr=0.5,1,2,4,8 "${TUNE[@]}" --out "$T/random" ;;
    replay)  metacl ckl tune "${SET[@]}" --strategy replay --lr "$(chosen "$T/adamw" lr)" \
               --grid replay_per_batch=2,4,8 "${TUNE[@]}" --out "$T/replay" ;;
    ewc)     metacl ckl tune "${SET[@]}" --strategy ewc --lr "$(chosen "$T/adamw" lr)" \
               --grid ewc_lambda=100,1000,10000 --seeds 0 --then-seeds 0 --out "$T/ewc" ;;
    lwf)     metacl ckl tune "${SET[@]}" --strategy lwf --lr "$(chosen "$T/adamw" lr)" \
               --grid lwf_alpha=0.5,1,2 --seeds 0 --then-seeds 0 --out "$T/lwf" ;;
    oracle)  metacl ckl run "${SET[@]}" --strategy oracle --oracle-data "$W/tl.jsonl" "$W/tl_val.jsonl" \
               --lr "$(chosen "$T/adamw" lr)" --seeds 0 1 2 --out "$T/oracle" ;;
    tw)      [ -d "$RUNS/taalm_v2_abl/tw_A13/best" ] || experiments/taalm_v2_ablation.sh "$LM" "$W" "$RUNS/taalm_v2_abl" A13 ;;
    learned_taalm)
             metacl ckl run "${SET[@]}" --strategy taalm --taalm-predictor "$RUNS/taalm_v2_abl/tw_A13/best" \
               --optimizer learned --optimizer-path "$LO" --learned-lr "$(chosen "$T/learned" learned_lr)" \
               --seeds 0 1 2 --out "$T/learned_taalm" ;;
    table)   python experiments/lo_v2_report.py --out docs/results/lo_v2_table --optimizer "$LO" \
               adamw="$T/adamw" learned="$T/learned" learned_taalm="$T/learned_taalm" adamw_replay="$T/replay" \
               oracle="$T/oracle" random="$T/random" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
