#!/usr/bin/env bash
# Reproduce the GPU results of docs/performance.md and docs/weights.md on one CUDA GPU:
#   bash scripts/reproduce_gpu.sh DATA_DIR [GPU]
# DATA_DIR holds CIFAR-10 (cifar-10-batches-py/, or cifar10/ with train*.npz and test.npz); GPU is the index
# of the GPU to use (default 0). Installs robnets with its test dependencies into .venv, then runs
#   1. the CUDA tests (pytest -k cuda; tests that need the reference fixtures skip unless ROBNETS_SHARED
#      points at them),
#   2. the throughput benchmark of robnet_free: plain vs fast path in fp32, and compiled in bf16
#      (rows f and i of the H200 table; compiling takes a few minutes),
#   3. the published robnet_free weights' recipe: N-FGSM training, 1 warm-up + 3 epochs, then clean and PGD-20
#      accuracy on the whole CIFAR-10 test set.
# Results go to $RESULTS (default runs/reproduce-gpu-<time>). Every step runs; the exit status is non-zero when
# one of them failed.
set -uo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: bash scripts/reproduce_gpu.sh DATA_DIR [GPU]" >&2
  exit 2
fi
DATA=$1
export CUDA_VISIBLE_DEVICES=${2:-0}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROBNETS_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup_env.sh" test || exit 1
cd "$ROOT"
RESULTS=${RESULTS:-runs/reproduce-gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
PY="$VENV/bin/python"
failed=()

step() {  # step NAME COMMAND...: run, log to $RESULTS/NAME.log, remember a failure
  local name=$1; shift
  echo "==> $name: $*" >&2
  "$@" 2>&1 | tee "$RESULTS/$name.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("$name")
}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), 'torch', torch.__version__)" || exit 1

step cuda-tests "$PY" -m pytest -q -rs -k cuda tests
step throughput-fp32 "$PY" benchmarks/throughput.py --device cuda --models robnet_free --iters 4 --out "$RESULTS/throughput-fp32"
step throughput-bf16-compiled "$PY" benchmarks/throughput.py --device cuda --models robnet_free --compile --bf16 --iters 4 \
  --workloads pgd20,train_pgd7 --out "$RESULTS/throughput-bf16-compiled"
step train "$VENV/bin/robnets" train --config robnet_free_nfgsm_gpu --data-dir "$DATA" --epochs 3 --device cuda \
  --output-dir "$RESULTS/robnet_free_nfgsm" --no-progress
step eval "$VENV/bin/robnets" eval --checkpoint "$RESULTS/robnet_free_nfgsm/final.safetensors" --data-dir "$DATA" \
  --attacks clean,pgd20 --batch-size 500 --device cuda --output-dir "$RESULTS/robnet_free_nfgsm-eval" --no-progress

echo "results in $RESULTS" >&2
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
