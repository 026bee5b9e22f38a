#!/bin/bash
# Device call 3 of 3 (carry .gpudata/c = train_2.npz, test.npz, SHA256SUMS, reference/): check the data,
# train robnet_free with N-FGSM for TRAIN_BUDGET seconds of epochs, evaluate clean / PGD-20 on the full
# test set in fp32 and bf16, the CUDA fixture tests, AutoAttack-standard speed; weights and logs to $OUT.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/cifar10
TRAIN_BUDGET=${TRAIN_BUDGET:-230}
cp .gpudata/c/*.npz .gpudata/c/SHA256SUMS /tmp/cifar10/ 2>/dev/null
[ -f /tmp/robnets_env ] && source /tmp/robnets_env
{
(cd /tmp/cifar10 && sha256sum -c SHA256SUMS) || echo "DATA CHECK FAILED"
EPOCHS=$(python3 scripts/device/plan_epochs.py /tmp/preflight.json "$TRAIN_BUDGET")
echo "== train robnet_free: 1 warm-up + $EPOCHS epochs"
start=$(date +%s)
timeout $((TRAIN_BUDGET + 90)) python3 -m robnets train --config experiments/robnet_free_nfgsm_gpu/config.yaml \
  --data-dir /tmp/cifar10 --epochs "$EPOCHS" --output-dir /tmp/rf --no-progress 2>&1 | tail -40
echo "training wall time: $(( $(date +%s) - start )) s"
W=/tmp/rf/final.safetensors; [ -f $W ] || W=/tmp/rf/best.safetensors
for p in fp32 bf16; do
  flag=""; [ $p = bf16 ] && flag="--bf16"
  timeout 120 python3 -m robnets eval --checkpoint $W --data-dir /tmp/cifar10 --attacks clean,pgd20 --batch-size 500 \
    $flag --output-dir /tmp/rf_eval_$p --no-progress 2>&1 | tail -8
done
ROBNETS_SHARED=$PWD/.gpudata/c timeout 60 python3 -m pytest -q -rf -p no:cacheprovider -k "fixtures and cuda" tests/test_acceleration.py 2>&1 | tail -5
timeout 100 python3 benchmarks/autoattack_speed.py --checkpoint $W --n 500 --bs 500 --device cuda --json /tmp/aa_gpu.json
echo "== CUDA tests of the opt-in Triton kernels (slow to compile)"
timeout 90 python3 -m pytest -q -rf --tb=line -p no:cacheprovider --timeout 80 -k "cuda" tests/test_triton_kernels.py \
  "tests/test_acceleration.py::test_cuda_fast_path_matches_plain[triton]" 2>&1 | tail -12
} 2>&1 | tee "$OUT/call3.log"
cp $W "$OUT/" 2>/dev/null
tar czf "$OUT/bundle.tgz" --exclude='*.pt' --exclude='*.safetensors' /tmp/rf /tmp/rf_eval_fp32 /tmp/rf_eval_bf16 /tmp/aa_gpu.json /tmp/preflight.json 2>/dev/null
ls -la "$OUT"
