#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install robnets into it (editable).
# Usage: bash scripts/setup_env.sh [EXTRAS]   e.g. "test" to add the test dependencies.
# The environment is $ROBNETS_VENV, default .venv in the repository root.
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
