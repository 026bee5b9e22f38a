#!/usr/bin/env bash
# Install robnets with its test dependencies into .venv, run the linter (ruff) and the whole test suite (CPU, no
# network).
# Extra arguments go to pytest (`-m "not slow"`: the quick loop). Two pytest-xdist workers of one thread each
# (ROBNETS_TEST_WORKERS to change; 0 runs serially). --dist loadscope keeps each test module on one worker, so
# module-scoped fixtures (a trained CNN, a finished search) run once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROBNETS_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup_env.sh" test
cd "$ROOT"
echo "==> ruff check (defects: unused or undefined names, bare excepts, mutable defaults; pyproject.toml)" >&2
"$VENV/bin/ruff" check --no-cache --quiet src tests benchmarks studies scripts hubconf.py main.py
WORKERS="${ROBNETS_TEST_WORKERS:-2}"
if [ "$WORKERS" = "0" ]; then
  exec "$VENV/bin/python" -m pytest "$@"
fi
exec "$VENV/bin/python" -m pytest -n "$WORKERS" --dist loadscope "$@"
