#!/usr/bin/env bash
# Re-test part 3: train the four finalists from scratch with one recipe and evaluate them on the CIFAR-10
# test set. Every step resumes or is skipped when its result exists.
# Usage (from the repository root): bash studies/search_retest/finalists.sh [DATA_DIR] [SEEDS]
#   DATA_DIR default $ROBNETS_DATA/cifar10, else data/cifar10; SEEDS default "0" (e.g. "0 1" for the spread across seeds)
# Evaluation: clean on all 10,000 test images, PGD-20 on the first $PGD_N (default 2000), and the reference
# AutoAttack (the reference implementation, pyautoattack; standard, Linf 8/255) on the first $AA_N (default 200)
# for seed 0.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATA="${1:-${ROBNETS_DATA:-data}/cifar10}"
SEEDS="${2:-0}"
PGD_N="${PGD_N:-2000}"
AA_N="${AA_N:-200}"
PY="${PYTHON:-.venv/bin/python}"
ROBNETS="${ROBNETS:-.venv/bin/robnets}"
HERE=studies/search_retest
[ -f "$HERE/finalists.json" ] || "$PY" "$HERE/pick_finalists.py"
names=$("$PY" -c "import json; print(' '.join(f['name'] for f in json.load(open('$HERE/finalists.json'))))")
genotype_of() { "$PY" -c "import json; print({f['name']: f['genotype'] for f in json.load(open('$HERE/finalists.json'))}['$1'])"; }
# first every finalist trained and evaluated with PGD-20, then the (much slower) AutoAttack runs
for seed in $SEEDS; do
  for name in $names; do
    run="$HERE/runs/finalists/$name-seed$seed"
    if [ ! -f "$run/final.safetensors" ]; then
      if [ -f "$run/state.pt" ]; then
        "$ROBNETS" train --resume "$run" --data-dir "$DATA" --no-progress
      else
        "$ROBNETS" train --config "$HERE/finalist.yaml" --genotype "$(genotype_of "$name")" --set "seed=$seed" \
          --output-dir "$run" --data-dir "$DATA" --no-progress
      fi
    fi
    [ -f "$run/final.safetensors" ] || { echo "$name seed $seed: training stopped; run again" >&2; exit 1; }
    if [ ! -f "$run/eval-pgd/results.json" ]; then
      "$ROBNETS" eval --checkpoint "$run/final.safetensors" --data-dir "$DATA" --attacks clean,pgd20 \
        --n-attack "$PGD_N" --batch-size 200 --device cpu --output-dir "$run/eval-pgd" --no-progress
    fi
  done
done
for name in $names; do
  run="$HERE/runs/finalists/$name-seed0"
  if [ -f "$run/final.safetensors" ] && [ ! -f "$run/autoattack.json" ]; then
    "$PY" "$HERE/autoattack_eval.py" --checkpoint "$run/final.safetensors" --data-dir "$DATA" --n "$AA_N" \
      --output "$run/autoattack.json"
  fi
done
