#!/usr/bin/env bash
# The main job on a fresh clone: install into .venv, then evaluate the published robnet_compact weights on
# the CIFAR-10 test sample embedded in the package (clean and PGD-20), with a result table.
# Extra arguments go to `robnets demo` (e.g. --n-attack 100, --device cuda).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROBNETS_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$VENV/bin/robnets" demo "$@"
