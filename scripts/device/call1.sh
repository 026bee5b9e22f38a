#!/bin/bash
# Device call 1 of 3 (carry .gpudata/a = train_0.npz): environment, preflight (kernel choice, CUDA graphs,
# N-FGSM step rate), a short end-to-end training + evaluation smoke run on the GPU, the CUDA tests.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/cifar10
cp .gpudata/a/* /tmp/cifar10/ 2>/dev/null
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
timeout 150 python3 scripts/device/preflight.py --env /tmp/robnets_env --json /tmp/preflight.json
cp /tmp/preflight.json "$OUT/" 2>/dev/null
[ -f /tmp/robnets_env ] && source /tmp/robnets_env && cat /tmp/robnets_env
echo "== smoke: train robnet_free 2 short epochs on 1,024 images, then evaluate"
timeout 120 python3 -m robnets train --config experiments/robnet_free_nfgsm_gpu/config.yaml --data-dir /tmp/cifar10 \
  --epochs 1 --set train.train_size=1024 --set train.val_size=256 --output-dir /tmp/smoke --no-progress 2>&1 | tail -15
timeout 60 python3 -m robnets eval --checkpoint /tmp/smoke/final.safetensors --sample --n 500 --attacks clean,pgd20 \
  --batch-size 500 --output-dir /tmp/smoke_eval --no-progress 2>&1 | tail -12
echo "== CUDA tests (PyTorch kernels; each test at most 60 s)"
timeout 120 python3 -m pytest -q -rf --tb=short -p no:cacheprovider --timeout 60 -k "cuda and not triton" \
  tests/test_acceleration.py tests/test_attacks.py tests/test_autoattack.py tests/test_training_data.py 2>&1 | tail -30
} 2>&1 | tee "$OUT/call1.log"
