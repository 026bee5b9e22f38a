#!/usr/bin/env bash
# The main job on a fresh clone: install robnets into .venv (scripts/setup_env.sh), then run `robnets demo`:
# the published robnet_compact.nfgsm_3ep_cifar10 weights (sha256-verified) on the 500 CIFAR-10 test images
# embedded in the package, clean accuracy on all 500 and PGD-20 (L-inf 8/255, step 2/255) on the first 200,
# with the sanity flags; prints the table and writes results.json, results.md and config.yaml into
# runs/eval-demo-robnet_compact-<time>/. Extra arguments go to `robnets demo` (e.g. --n-attack 100, --device cuda).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROBNETS_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$VENV/bin/robnets" demo "$@"
