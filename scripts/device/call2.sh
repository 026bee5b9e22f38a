#!/bin/bash
# Device call 2 of 3 (carry .gpudata/b = train_1.npz): throughput benchmark, plain vs fast, fp32 and bf16.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/cifar10
cp .gpudata/b/* /tmp/cifar10/ 2>/dev/null
[ -f /tmp/robnets_env ] && source /tmp/robnets_env
{
timeout 120 python3 benchmarks/throughput.py --device cuda --models robnet_free,preact_resnet18 --iters 4 --profile --out "$OUT"
timeout 50 python3 benchmarks/throughput.py --device cuda --models robnet_free --bf16 --iters 2 --workloads forward,pgd20 --out "$OUT"
} 2>&1 | tee "$OUT/call2.log"
