#!/bin/bash
# Device call 2 of 3 (carry .gpudata/b = train_1.npz): time the N-FGSM training step of robnet_free (bf16,
# as the trainer runs it) for plan_epochs.py in call 3.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/cifar10
cp .gpudata/b/* /tmp/cifar10/ 2>/dev/null
{
timeout 60 python3 scripts/device/preflight.py --train-rate-only --json /tmp/preflight.json
cp /tmp/preflight.json "$OUT/" 2>/dev/null
} 2>&1 | tee "$OUT/call2.log"
