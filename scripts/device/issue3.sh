#!/bin/bash
# Issue 3 on a lent GPU in one call (carry .gpudata/r: the reference fixtures, 6.6 MB, see README; stages capped
# at 570 s in all): the kink-aware same-numbers CUDA tests (PyTorch kernels), the float64 diagnosis per path
# and cuDNN variant, the default fast path against the plain path (this device), then torch.compile and the
# Triton kernels (speed_next.sh). Name nvidia-h100-x1 for the targets. Follow with issue3_followup.sh
# on the warm machine (Triton's and Inductor's caches in /tmp and ~/.triton survive while it is warm).
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
echo "== same numbers on CUDA (PyTorch kernels; each test at most 60 s)"
ROBNETS_SHARED=$PWD/.gpudata/r timeout ${TESTS_T:-80} python3 -m pytest -q -rf --tb=short -p no:cacheprovider --timeout 60 \
  -k "cuda and not triton" tests/test_acceleration.py tests/test_attacks.py 2>&1 | tail -15
echo "== flips per path and cuDNN variant"
timeout ${DIAG_T:-50} python3 scripts/device/diagnose_cuda_numerics.py --variants default,nchw \
  --json "$OUT/numerics.json" 2>&1 | tail -12
echo "== default fast path (PyTorch kernels, CUDA graphs) vs plain, fp32"
timeout ${DEFAULT_T:-60} python3 benchmarks/throughput.py --device cuda --models robnet_free --iters 4 --out "$OUT/default" 2>&1 | tail -10
} 2>&1 | tee "$OUT/issue3.log"
COMPILE_T=${COMPILE_T:-180} TRITON_T=${TRITON_T:-195} BATCH_T=0 bash scripts/device/speed_next.sh
