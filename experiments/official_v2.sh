#!/usr/bin/env bash
# The official LAMA-ckl track (issue 20): the `small` base LM pretrained on NF material only, then the
# rows every later comparison needs on the 500 official TL items, 3 seeds, honest protocol first.
#
# Usage: experiments/official_v2.sh RUNS_DIR [ROW...]
#   ROW: meta_split | base_lm | finetune | oracle | oracle_sentence | random | lora | replay | lwf | ewc | mix_review | salient_span (issue 19's control)
#        (default: all, in that order). Reruns resume: finished seeds are skipped.
# Knobs (environment): DATA (../shared/data/lama_ckl), EPOCHS (4: 8 epochs of 9 rows x 3 seeds at ~65 s per epoch do not fit one 2-core session; each row's metrics.jsonl shows whether tl_val was still rising), LR (1e-3), SEEDS ("0 1 2"), MAXLEN (512:
#   official evidence is often longer than 256 tokens, and the oracles recognise whole documents),
#   LM_EPOCHS (60), TAG (official_v2: where results go under docs/results/).
# Old text (--old-corpus, for every row): the base LM's own pre-training corpus
# ($LM/official_nf_corpus.jsonl: NF evidence + NF fact sentences). The official folder has none, and
# without it replay would rehearse only the TL documents it has seen, mix_review would do nothing and
# ewc would estimate its Fisher without old data. Rows that never read it (finetune, oracle*, random,
# lora, lwf) give the same numbers with or without it (finetune, oracle and random ran without it).
# Every run: AdamW, batch 8, teacher-forced probes of TL / NF / tl_val (10% of TL carved by uuid hash)
# before training and after every epoch (no exact match), on the CPU, one thread, nice 5.
# Results: docs/results/${TAG}_<row>/{summary.json,table.md,plot.png,metrics.jsonl}; the base LM's
# pretrain.json and its NF/TL probe scores in docs/results/${TAG}_base_lm/.
set -euo pipefail
RUNS=${1:?runs dir}; shift
ROWS=${*:-"meta_split base_lm finetune oracle oracle_sentence random lora replay lwf ewc mix_review"}
DATA=${DATA:-../shared/data/lama_ckl}; EPOCHS=${EPOCHS:-4}; LR=${LR:-1e-3}; SEEDS=${SEEDS:-"0 1 2"}
MAXLEN=${MAXLEN:-512}; LM_EPOCHS=${LM_EPOCHS:-60}; TAG=${TAG:-official_v2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TQDM_DISABLE=1
M="nice -n 5 python -m metacl"
LM=$RUNS/official_lm
BASE=$LM/model
mkdir -p "$RUNS"
object_share() { python experiments/world_v2_object_share.py "$BASE" "$DATA/variant.jsonl"; }
for row in $ROWS; do
  echo "=== $row $(date -u +%H:%M:%S)"
  case $row in
    meta_split)
      [ -f "$RUNS/official_meta/official_meta.json" ] || $M data official-meta --data "$DATA" --out "$RUNS/official_meta"
      continue ;;
    base_lm)
      # corpus: the NF evidence documents + each NF fact sentence once; never any TL text
      [ -f "$BASE/pretrain.json" ] || nice -n 5 python experiments/base_lm.py official --data "$DATA" --size small \
        --epochs "$LM_EPOCHS" --out "$LM" --json "$LM/probe.json"
      mkdir -p docs/results/${TAG}_base_lm && cp "$BASE/pretrain.json" "$LM/probe.json" docs/results/${TAG}_base_lm/
      continue ;;
    finetune|lora|replay|lwf|ewc|mix_review|salient_span) strat=($row) ;;
    oracle|oracle_sentence) strat=($row --oracle-data "$DATA/variant.jsonl") ;;
    random) strat=(random --random-mean "$(object_share)") ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
  out=$RUNS/${TAG}_$row
  $M ckl run --model "$BASE" --data "$DATA" --old-corpus "$LM/official_nf_corpus.jsonl" --strategy "${strat[@]}" \
    --epochs "$EPOCHS" --seeds $SEEDS --lr "$LR" --batch-size 8 --max-length "$MAXLEN" --no-exact-match --device cpu --out "$out" > "$out.log" 2>&1
  mkdir -p docs/results/${TAG}_$row
  cp "$out/summary.json" "$out/table.md" "$out/plot.png" "$out/metrics.jsonl" docs/results/${TAG}_$row/
done
