#!/bin/bash
# Third call of issue 3 (fresh machine, ~280 s): the CUDA tests again (the weight-change test fixed: it
# compared a second seeded call with a first one), the float64 diagnosis without the Triton kernels (they
# compile for minutes), then the compiled fast path with bf16 autocast against the plain path in bf16 and fp32.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
echo "== same numbers on CUDA"
ROBNETS_SHARED=$PWD/.gpudata/r timeout 35 python3 -m pytest -q -rf --tb=short -p no:cacheprovider --timeout 30 \
  -k "cuda and not triton" tests/test_acceleration.py tests/test_attacks.py 2>&1 | tail -6
echo "== flips per path and cuDNN variant (no Triton)"
timeout 70 python3 scripts/device/diagnose_cuda_numerics.py --no-triton --variants default,nchw \
  --json "$OUT/numerics.json" 2>&1 | tail -8
echo "== torch.compile + bf16 autocast (plain path also bf16)"
timeout 175 python3 benchmarks/throughput.py --device cuda --models robnet_free --compile --bf16 --iters 3 \
  --workloads pgd20 --out "$OUT/compile_bf16" 2>&1 | tail -6
} 2>&1 | tee "$OUT/final.log"
rm -f "$OUT"/*/*.md
