#!/bin/bash
# Issue 3 on a lent GPU in one call (carry .gpudata/r: the reference fixtures, 6.6 MB, see README; ~9 minutes
# timeout): the rewritten same-numbers CUDA tests (kink-aware, PyTorch kernels), the float64 diagnosis per
# path and cuDNN variant, then the speed stages of speed_next.sh (torch.compile, Triton steady state,
# largest batch). Run it first on a fresh machine; name nvidia-h100-x1 for the targets.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
echo "== same numbers on CUDA (PyTorch kernels; each test at most 60 s)"
ROBNETS_SHARED=$PWD/.gpudata/r timeout 100 python3 -m pytest -q -rf --tb=short -p no:cacheprovider --timeout 60 -k "cuda and not triton" \
  tests/test_acceleration.py tests/test_attacks.py 2>&1 | tail -15
echo "== flips per path and cuDNN variant"
timeout 90 python3 scripts/device/diagnose_cuda_numerics.py --variants default,nchw,no_cudnn \
  --json "$OUT/numerics.json" 2>&1 | tail -14
} 2>&1 | tee "$OUT/issue3.log"
COMPILE_T=200 TRITON_T=120 BATCH_T=60 bash scripts/device/speed_next.sh  # stages sum to 570 s
