#!/bin/bash
# Device call 3 of 3 (carry .gpudata/c = train_2.npz, test.npz, SHA256SUMS, reference/): check the data,
# train robnet_free with N-FGSM for TRAIN_BUDGET seconds of epochs, weights to $OUT at once, then evaluate
# clean / PGD-20 on the full test set (fp32) and run the CUDA fixture tests. Everything under 600 s.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/cifar10
TRAIN_BUDGET=${TRAIN_BUDGET:-400}
cp .gpudata/c/*.npz .gpudata/c/SHA256SUMS /tmp/cifar10/ 2>/dev/null
{
(cd /tmp/cifar10 && sha256sum -c SHA256SUMS) || echo "DATA CHECK FAILED"
EPOCHS=$(python3 scripts/device/plan_epochs.py /tmp/preflight.json "$TRAIN_BUDGET")
echo "== train robnet_free: 1 warm-up + $EPOCHS epochs"
start=$(date +%s)
timeout $((TRAIN_BUDGET + 50)) python3 -m robnets train --config experiments/robnet_free_nfgsm_gpu/config.yaml \
  --data-dir /tmp/cifar10 --epochs "$EPOCHS" --output-dir /tmp/rf --no-progress 2>&1 | tail -30
echo "training wall time: $(( $(date +%s) - start )) s"
W=/tmp/rf/final.safetensors; [ -f $W ] || W=/tmp/rf/best.safetensors
cp $W /tmp/rf/best.safetensors "$OUT/" 2>/dev/null
cp /tmp/rf/metrics.jsonl /tmp/rf/config.yaml "$OUT/" 2>/dev/null
start=$(date +%s)
timeout 150 python3 -m robnets eval --checkpoint $W --data-dir /tmp/cifar10 --attacks clean,pgd20 --batch-size 500 \
  --output-dir /tmp/rf_eval_fp32 --no-progress 2>&1 | tail -12
echo "evaluation wall time: $(( $(date +%s) - start )) s"
cp /tmp/rf_eval_fp32/results.json "$OUT/eval_fp32.json" 2>/dev/null
ROBNETS_SHARED=$PWD/.gpudata/c timeout 40 python3 -m pytest -q -rf -p no:cacheprovider -k "fixtures and cuda" tests/test_acceleration.py 2>&1 | tail -5
} 2>&1 | tee "$OUT/call3.log"
ls -la "$OUT"
