#!/bin/bash
# The next GPU speed measurements for issue 3 (run on a warm machine, e.g. in place of call2.sh's timing):
# the fast path through torch.compile and with the Triton kernels, each against the plain path, robnet_free,
# PGD-20 and the PGD-7 training step, fp32, batch 256. Compilation happens in the untimed warm-up; each
# stage has its own timeout so one slow compile cannot eat the rest.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
echo "== torch.compile (ROBNETS_COMPILE=1)"
timeout ${COMPILE_T:-240} python3 benchmarks/throughput.py --device cuda --models robnet_free --compile --iters 3 \
  --workloads pgd20,train_pgd7 --out "$OUT/compile" 2>&1 | tail -10
echo "== Triton kernels (ROBNETS_FAST_KERNELS=triton)"
ROBNETS_FAST_KERNELS=triton timeout ${TRITON_T:-240} python3 benchmarks/throughput.py --device cuda --models robnet_free \
  --iters 3 --workloads ${TRITON_WORKLOADS:-pgd20} --out "$OUT/triton" 2>&1 | tail -10
[ "${BATCH_T:-90}" = 0 ] || { echo "== largest batch"
timeout ${BATCH_T:-90} python3 benchmarks/throughput.py --device cuda --models robnet_free --iters 1 --workloads forward \
  --max-batch --out "$OUT/batch" 2>&1 | tail -3; }
} 2>&1 | tee "$OUT/speed_next.log"
rm -f "$OUT"/*/*.md  # at most 8 files come back; the tables are in the logs, the numbers in the JSON
