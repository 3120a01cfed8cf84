#!/usr/bin/env bash
# The GPU check of issue 18 (see experiments/gpu_check.py): at most ~8 minutes on one H200-class GPU.
#   experiments/gpu_check.sh --device cuda --out DIR
#   experiments/gpu_check.sh --device cpu --tiny --out DIR     # dry run (the tests call this)
# Writes DIR/gpu_check.json, DIR/gpu_check.md, DIR/gpu_check.log. Needs no internet; imports
# neither datasets nor faker nor higher. PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" experiments/gpu_check.py "$@"
