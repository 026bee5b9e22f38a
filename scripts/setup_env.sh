#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install robnets into it.
# Usage: source scripts/setup_env.sh [extras]   e.g. "test" to add the test dependencies.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${ROBNETS_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtual environment $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
SPEC="$ROOT"
if [ -n "${1:-}" ]; then SPEC="$ROOT[$1]"; fi
echo "==> installing robnets (${1:-runtime} dependencies) into $VENV" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$SPEC"
