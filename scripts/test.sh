#!/usr/bin/env bash
# Install robnets with its test dependencies into .venv and run the whole test suite (CPU, no network).
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROBNETS_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup_env.sh" test
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
