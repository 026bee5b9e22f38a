#!/bin/bash
# Second call of issue 3, at once on the warm machine after issue3.sh (~105 s on an H200): profiles of one PGD
# step with the Triton kernels and with the compiled fast path (kernel time breakdown; their compiled kernels are
# cached while the machine is warm), the default fast path in bf16, and the largest batch. What the fourth
# session ran as its second call (results/gpu-h200-2026-11-26-issue3/call2-profiles-bf16-batch.log).
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
echo "== triton profile"
ROBNETS_FAST_KERNELS=triton timeout 70 python3 benchmarks/throughput.py --device cuda --models robnet_free --iters 2 \
  --workloads forward --profile --out "$OUT/tp" 2>&1 | tail -22
echo "== compile profile"
ROBNETS_COMPILE=1 timeout 80 python3 benchmarks/throughput.py --device cuda --models robnet_free --iters 2 \
  --workloads forward --profile --out "$OUT/cp" 2>&1 | tail -22
echo "== bf16"
timeout 45 python3 benchmarks/throughput.py --device cuda --models robnet_free --iters 2 --bf16 --workloads pgd20 \
  --out "$OUT/bf16" 2>&1 | tail -6
echo "== batch"
timeout 60 python3 benchmarks/throughput.py --device cuda --models robnet_free --iters 1 --workloads forward \
  --max-batch --out "$OUT/batch" 2>&1 | tail -3
} 2>&1 | tee "$OUT/followup.log"
rm -f "$OUT"/*/*.md
