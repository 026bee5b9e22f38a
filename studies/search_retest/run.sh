#!/usr/bin/env bash
# The search part of the re-test, start to finish; every step resumes where an earlier call stopped.
# Usage (from the repository root): bash studies/search_retest/run.sh [DATA_DIR]   (default $ROBNETS_DATA/cifar10, else data/cifar10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATA="${1:-${ROBNETS_DATA:-data}/cifar10}"
ROBNETS="${ROBNETS:-.venv/bin/robnets}"
HERE=studies/search_retest
search() {  # search NAME: start it, or resume its run folder
  local folder="$HERE/runs/$1"
  if [ -f "$folder/config.yaml" ]; then
    "$ROBNETS" search --resume "$folder" --data-dir "$DATA" --no-progress
  else
    "$ROBNETS" search --config "$HERE/$1.yaml" --output-dir "$folder" --data-dir "$DATA" --no-progress
  fi
  [ -f "$folder/analysis.json" ] || { echo "$1: search stopped before its report; run again" >&2; exit 1; }
}
search free     # trains the shared supernet; 32 cell-free candidates with inherited and fine-tuned FSP losses
search cell     # 64 cell-based candidates of spread density on the same supernet
"$ROBNETS" search --rescore "$HERE/runs/cell" --candidates 12 --finetune-seed 1 --data-dir "$DATA" --no-progress
