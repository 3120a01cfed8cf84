#!/usr/bin/env bash
# LAMA-ckl-style evaluation of the learned optimizer on a generated world (issue 6, LM part):
# the same world / base LM / protocol as the `lo_ckl_learned` row of docs/results/learned_optimizer.md
# (runs/baselines1/{base_lm,world}, 3 epochs, first 40 TL/NF items, batch 8, max length 128, seeds 0 1 2),
# so every row here is comparable with that row and with the AdamW finetune row (baselines1_finetune).
#
# Usage: experiments/lo_ckl.sh SET...
#   taalm_adamw          taalm (runs/taalm/tw/best, the 20-meta-step weighter) + AdamW lr 1e-3
#   taalm_learned        taalm + learned optimizer, shipped default (digits-trained) weights
#   learned_lm           finetune + learned optimizer meta-trained on the `lm` family ($LM_OPT, default runs/lo_lm)
#   taalm_learned_lm     taalm + the `lm`-trained learned optimizer
#   learned_lm_x3        finetune + the `lm`-trained optimizer with --learned-lr 3 (3x its learned step)
#   learned_mix          finetune + the optimizer meta-trained on `digits+lm` (runs/lo_lm_mix)
#   learned_init         finetune + the *untrained* network (init lr 1e-3, seed 0; written to runs/lo_lm_init):
#                        the control that says what meta-training on `lm` changed
# Each run goes to runs/lo_ckl_<set>/ and its summary.json + table.md + plot.png to docs/results/lo_ckl_<set>/.
# The meta-training runs behind them (OMP_NUM_THREADS=1; ~25 and ~15 min on the shared 2-core CPU):
#   metacl meta-train optimizer --family lm --out runs/lo_lm --steps 150 --inner-steps 18 \
#       --tasks-per-episode 2 --init-lr 1e-3 --seed 0 --ckpt-every 10 --no-progress
#   metacl meta-train optimizer --family digits+lm --out runs/lo_lm_mix --steps 120 --inner-steps 18 \
#       --tasks-per-episode 2 --init-lr 1e-3 --seed 0 --ckpt-every 10 --no-progress
# and the held-out comparison on the lm family:
#   python experiments/lo_ckl_lm_eval.py --run runs/lo_lm --episodes 8 --out docs/results/lo_ckl_lm_meta/heldout.json
set -euo pipefail
MODEL=${MODEL:-runs/baselines1/base_lm}; WORLD=${WORLD:-runs/baselines1/world}
PRED=${PRED:-runs/taalm/tw/best}; LM_OPT=${LM_OPT:-runs/lo_lm}
SEEDS=${SEEDS:-"0 1 2"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
common=(--model "$MODEL" --data "$WORLD" --epochs 3 --seeds $SEEDS --max-items 40 --max-length 128
        --batch-size 8 --no-exact-match --device cpu)
for set in "$@"; do
  case $set in
    taalm_adamw)      args=(--strategy taalm --taalm-predictor "$PRED" --optimizer adamw --lr 1e-3) ;;
    taalm_learned)    args=(--strategy taalm --taalm-predictor "$PRED" --optimizer learned) ;;
    learned_lm)       args=(--strategy finetune --optimizer learned --optimizer-path "$LM_OPT") ;;
    taalm_learned_lm) args=(--strategy taalm --taalm-predictor "$PRED" --optimizer learned --optimizer-path "$LM_OPT") ;;
    learned_lm_x3)    args=(--strategy finetune --optimizer learned --optimizer-path "$LM_OPT" --learned-lr 3) ;;
    learned_mix)      args=(--strategy finetune --optimizer learned --optimizer-path runs/lo_lm_mix) ;;
    learned_init)
      python -c "from metacl.optim import network as nw; from metacl.optim.learned import save_meta; \
net = nw.NetConfig(init_lr=1e-3); save_meta('runs/lo_lm_init', nw.init_meta(net, 0), net, info={'note': 'untrained, init_lr 1e-3, seed 0'})"
      args=(--strategy finetune --optimizer learned --optimizer-path runs/lo_lm_init) ;;
    *) echo "unknown set $set" >&2; exit 2 ;;
  esac
  out=runs/lo_ckl_$set
  echo "=== $set $(date -u +%H:%M:%S)"
  metacl ckl run "${common[@]}" "${args[@]}" --out "$out"
  mkdir -p docs/results/lo_ckl_$set
  cp "$out/summary.json" "$out/table.md" "$out/plot.png" docs/results/lo_ckl_$set/
  echo "=== done $set $(date -u +%H:%M:%S)"
done
