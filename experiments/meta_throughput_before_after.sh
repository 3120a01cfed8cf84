#!/usr/bin/env bash
# idle-machine before/after of the issue-18 meta-step bench, 2 threads, back to back
cd "$(dirname "$0")/.."
D=docs/results/meta_throughput_issue18/idle_final
mkdir -p $D
for size in small cpu-small; do
  PYTHONPATH=${BEFORE_TREE:?export of the before commit, e.g. git archive fb2efc0 | tar -x -C /tmp/fb2efc0} python experiments/bench_meta_throughput.py --size $size --device cpu --K 2 --M 4 --T 64 --repeats 2 --warmup 1 --threads 2 --out $D/before_${BEFORE_NAME:-fb2efc0}_$size.json > $D/before_${BEFORE_NAME:-fb2efc0}_$size.log 2>&1
  python experiments/bench_meta_throughput.py --size $size --device cpu --K 2 --M 4 --T 64 --repeats 2 --warmup 1 --threads 2 --out $D/after_$size.json > $D/after_$size.log 2>&1
done
uptime > $D/uptime_end.txt
