#!/usr/bin/env bash
# Issue 16: the TAALM-style LAMA-ckl baselines table, every hyperparameter chosen on tl_val only.
#
# Usage: experiments/baselines_v2.sh RUNS DATA_DIR MODEL TAG [STRATEGY...]
#   e.g. experiments/baselines_v2.sh runs/bv2 runs/world_v2/world runs/world_v2/base_lm baselines_v2
#
# For each strategy (default: every registered one that needs no extra file; name the others and
# give their files in EXTRA, e.g. EXTRA="--taalm-predictor DIR" ... taalm):
#   1. `metacl ckl tune` on tuning seed(s) $TUNE_SEEDS over --grid lr=$LRS and the strategy's option
#      axis from the table below (none for a method that never trains), with --epochs $EPOCHS
#      --patience $PATIENCE on all items: each point is one `ckl run`; the point with the best tl_val
#      accuracy at its honest epoch is chosen (ties -> the earlier point). TL test plays no part.
#   2. the chosen point on seeds $SEEDS (--then-seeds; the tuning seed's rows are reused, not rerun)
#      into RUNS/TAG/<strategy>/final: a normal `ckl run` folder, honest and paper protocols.
#   3. `metacl ckl compare` of every final run into $DOCS (default docs/results/${TAG}_table/), with
#      each strategy's tune.json, tune.md (every point, its tl_val score, the choice and the rule) and
#      final summary.json / table.md copied to $DOCS/<strategy>/, and the exact command in $DOCS/command.txt.
#
# STRATEGY+learned (e.g. finetune+learned) is STRATEGY with the learned optimizer (`--optimizer learned`, the
# shipped default weights, or OPTIMIZER_PATH): its lr axis is the update multiplier, --grid
# learned_lr=$LEARNED_LRS, in place of AdamW's lr; the option axis is STRATEGY's.
#
# Env: LRS, LEARNED_LRS, OPTIMIZER_PATH, EPOCHS, PATIENCE, SEEDS, TUNE_SEEDS, NO_OPTION_GRID=1 (lr axis only), EXTRA (flags for
# every run, e.g. "--device cuda --batch-size 16"), METACL (the command, default `metacl`), DOCS.
# The defaults are the reported protocol; smaller values are for smoke tests only.
# Reruns resume: finished points, seeds and final runs are skipped.
set -euo pipefail
RUNS=${1:?RUNS folder (runs go to RUNS/TAG/<strategy>)}
DATA=${2:?DATA_DIR (tl.jsonl + nf.jsonl [+ tl_val.jsonl], or the official LAMA-ckl folder)}
MODEL=${3:?MODEL (base LM folder)}
TAG=${4:?TAG (names RUNS/TAG and docs/results/TAG_table)}
shift 4

LRS=${LRS:-3e-4,1e-3,3e-3}
LEARNED_LRS=${LEARNED_LRS:-0.5,1,2,4,8,16}
EPOCHS=${EPOCHS:-30}
PATIENCE=${PATIENCE:-3}
SEEDS=${SEEDS:-"0 1 2"}
TUNE_SEEDS=${TUNE_SEEDS:-0}
METACL=${METACL:-metacl}
DOCS=${DOCS:-docs/results/${TAG}_table}
EXTRA=${EXTRA:-}

# ---------------------------------------------------------------------------------------------
# The grid: every training strategy gets --grid lr=$LRS, times its main option below (if any).
# strategy          option axis                  fixed flags (not tuned)
GRID_TABLE='
agem              agem_mem_batch=4,16          -
das               -                            -
ewc               ewc_lambda=100,1000          -
finetune          -                            -
icl               -                            -
k_adapter         k_adapter_rank=16,64         -
lora              lora_r=8,32                  -
lwf               lwf_alpha=0.5,1              -
mix_review        mix_review_ratio=0.5,1       -
ncl               ncl_lambda=100,1000          -
olora             olora_lambda=0.1,0.5         -
oracle            -                            -
oracle_sentence   -                            -
osft              osft_trr=0.5,0.8             -
progressive       progressive_width=32,128     -
random            -                            -
recadam           recadam_gamma=100,1000       -
replay            replay_per_batch=2,4         -
rho1              rho1_ratio=0.4,0.6           -
rho1_ref          rho1_ref_ratio=0.4,0.6       -
salient_span      -                            -
spg               -                            -
taalm             -                            -
tasl              tasl_top=0.25,0.5            --tasl-consolidate=epoch
'
# Need a file given in EXTRA (--oracle-data, --rho1-ref-model, --taalm-predictor): run only when named.
NEEDS_FILES="oracle oracle_sentence rho1_ref taalm"
# tasl: merging once per task would happen after LAMA-ckl's last probe; per epoch the probes see it.
# ---------------------------------------------------------------------------------------------

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LISTING=$($METACL ckl strategies)
if [ "$#" -gt 0 ]; then
  STRATEGIES="$*"
else
  STRATEGIES=$(echo "$LISTING" | awk '{print $1}' | while read -r s; do
    case " $NEEDS_FILES " in *" $s "*) ;; *) echo "$s" ;; esac; done | tr '\n' ' ')
fi

row_of() { echo "$GRID_TABLE" | awk -v s="$1" '$1 == s {print; exit}'; }

finals=()
mkdir -p "$DOCS"
for s in $STRATEGIES; do
  base=${s%+learned}
  opt=(); lrgrid="lr=$LRS"
  if [ "$base" != "$s" ]; then
    opt=(--optimizer learned ${OPTIMIZER_PATH:+--optimizer-path "$OPTIMIZER_PATH"}); lrgrid="learned_lr=$LEARNED_LRS"
  fi
  row=$(row_of "$base")
  if [ -z "$row" ]; then
    echo "baselines_v2.sh: strategy $base has no row in GRID_TABLE; add one (option axis or -)" >&2; exit 2
  fi
  axis=$(echo "$row" | awk '{print $2}')
  fixed=$(echo "$row" | awk '{print $3}')
  grid=()
  if echo "$LISTING" | awk -v s="$base" '$1 == s' | grep -q "\[no training\]"; then
    : # never trains: one point, no learning rate to choose
  else
    grid+=(--grid "$lrgrid")
    if [ "$axis" != "-" ] && [ "${NO_OPTION_GRID:-0}" != 1 ]; then grid+=(--grid "$axis"); fi
  fi
  [ "$fixed" = "-" ] && fixed=""
  out="$RUNS/$TAG/$s"
  echo "=== $s: tune ${grid[*]:-(no grid)} $(date -u +%H:%M:%S)"
  # shellcheck disable=SC2086  # EXTRA, fixed and the seed lists are word lists on purpose
  $METACL ckl tune --model "$MODEL" --data "$DATA" --strategy "$base" "${opt[@]}" --out "$out" \
    --epochs "$EPOCHS" --patience "$PATIENCE" --seeds $TUNE_SEEDS --then-seeds $SEEDS \
    "${grid[@]}" $fixed $EXTRA
  mkdir -p "$DOCS/$s"
  cp "$out/tune.json" "$out/tune.md" "$DOCS/$s/"
  cp "$out/final/summary.json" "$out/final/table.md" "$DOCS/$s/"
  finals+=("$out/final")
done

$METACL ckl compare "${finals[@]}" --out "$DOCS"
{
  echo "# written by experiments/baselines_v2.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "experiments/baselines_v2.sh $RUNS $DATA $MODEL $TAG $STRATEGIES"
  echo "LRS=$LRS LEARNED_LRS=$LEARNED_LRS OPTIMIZER_PATH=${OPTIMIZER_PATH:-} EPOCHS=$EPOCHS PATIENCE=$PATIENCE SEEDS=\"$SEEDS\" TUNE_SEEDS=\"$TUNE_SEEDS\" NO_OPTION_GRID=${NO_OPTION_GRID:-0} EXTRA=\"$EXTRA\""
} > "$DOCS/command.txt"
echo "wrote $DOCS/table.md, plot.png, command.txt and <strategy>/tune.json, tune.md, summary.json, table.md"
