#!/bin/bash
# Device call 1 of 3 (carry .gpudata/a = train_0.npz): the CUDA tests with the default (PyTorch) kernels.
# Kept short (~1 min): the device time goes to the training run in call 3.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/cifar10
cp .gpudata/a/* /tmp/cifar10/ 2>/dev/null
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
echo "== CUDA tests (PyTorch kernels; each test at most 40 s)"
timeout 75 python3 -m pytest -q -rf --tb=short -p no:cacheprovider --timeout 40 -k "cuda and not triton" \
  tests/test_acceleration.py tests/test_attacks.py tests/test_training_data.py 2>&1 | tail -20
echo "== where the fast path's fp32 gradient loses accuracy on CUDA (issue 3, same numbers)"
timeout 90 python3 scripts/device/diagnose_cuda_numerics.py --json "$OUT/numerics.json" 2>&1 | tail -12
} 2>&1 | tee "$OUT/call1.log"
