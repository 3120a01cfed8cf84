#!/usr/bin/env bash
# World v2 (issue 20): the default world, the `small` base LM pretrained on it, and the rows every
# later comparison needs, 3 seeds, honest protocol first.
#
# Usage: experiments/world_v2.sh RUNS_DIR [ROW...]
#   ROW: world | base_lm | finetune | oracle | oracle_sentence | random | lora | replay | lwf | ewc | mix_review | salient_span (issue 19's control)
#        (default: all, in that order). Reruns resume: finished seeds are skipped.
# Knobs (environment): ENTITIES (200), DISTRACTORS ("3 5", the default of `metacl data world`), EPOCHS (8), LR (1e-3), SEEDS ("0 1 2"),
#   MAXLEN (256), TAG (world_v2: where results go under docs/results/).
# Every run: AdamW, batch 8, teacher-forced probes of TL / NF / tl_val before training and after
# every epoch (no exact match), on the CPU, one thread, nice 5.
# Results: docs/results/${TAG}_<row>/{summary.json,table.md,plot.png}, the merged table in
# docs/results/${TAG}_table/, the base LM's pretrain.json in docs/results/${TAG}_base_lm/.
set -euo pipefail
RUNS=${1:?runs dir}; shift
ROWS=${*:-"world base_lm finetune oracle oracle_sentence random lora replay lwf ewc mix_review"}
ENTITIES=${ENTITIES:-200}; DISTRACTORS=${DISTRACTORS:-"3 5"}; EPOCHS=${EPOCHS:-8}; LR=${LR:-1e-3}
SEEDS=${SEEDS:-"0 1 2"}; MAXLEN=${MAXLEN:-256}; TAG=${TAG:-world_v2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TQDM_DISABLE=1
M="nice -n 5 python -m metacl"
# WORLD0: a world whose corpus trains the base LM; WORLD: the world with this run's DISTRACTORS (the
# same corpus, probes and NF: only the TL-like documents differ, `cmp` below checks the corpus)
WORLD0=$RUNS/world_e${ENTITIES}_s0
WORLD=$RUNS/world_e${ENTITIES}_d${DISTRACTORS// /-}
BASE=${BASE:-$RUNS/lm_small_s0}
mkdir -p "$RUNS"
# the mean weight of the object oracle on TL documents, for the mean-matched random row
object_share() { python experiments/world_v2_object_share.py "$BASE" "$WORLD/tl.jsonl" "$WORLD/tl_val.jsonl"; }
for row in $ROWS; do
  echo "=== $row $(date -u +%H:%M:%S)"
  case $row in
    world)
      [ -f "$WORLD0/world.json" ] || $M data world --entities "$ENTITIES" --seed 0 --distractors 6 8 --out "$WORLD0"
      [ -f "$WORLD/world.json" ] || $M data world --entities "$ENTITIES" --seed 0 --distractors $DISTRACTORS --out "$WORLD"
      cmp "$WORLD0/pretrain_corpus.jsonl" "$WORLD/pretrain_corpus.jsonl"   # the base LM's corpus is this world's
      continue ;;
    base_lm)
      # the corpus does not depend on DISTRACTORS, so one base LM serves every document setting
      [ -f "$BASE/pretrain.json" ] || $M pretrain --corpus "$WORLD0/pretrain_corpus.jsonl" --size small --seed 0 --out "$BASE"
      mkdir -p docs/results/${TAG}_base_lm && cp "$BASE/pretrain.json" docs/results/${TAG}_base_lm/
      continue ;;
    finetune|lora|replay|lwf|ewc|mix_review|salient_span) strat=($row) ;;
    oracle|oracle_sentence) strat=($row --oracle-data "$WORLD/tl.jsonl" "$WORLD/tl_val.jsonl") ;;
    random) strat=(random --random-mean "$(object_share)") ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
  out=$RUNS/${TAG}_$row
  $M ckl run --model "$BASE" --data "$WORLD" --strategy "${strat[@]}" --epochs "$EPOCHS" --seeds $SEEDS \
    --lr "$LR" --batch-size 8 --max-length "$MAXLEN" --no-exact-match --device cpu --out "$out" > "$out.log" 2>&1
  mkdir -p docs/results/${TAG}_$row
  cp "$out/summary.json" "$out/table.md" "$out/plot.png" "$out/metrics.jsonl" docs/results/${TAG}_$row/
done
