#!/bin/bash
# Issue 3, the next GPU session, one call (no data to carry; stages capped at 575 s in all). Name
# nvidia-h100-x1 when status allows: the targets are H100 ratios.
#  0. the CUDA correctness test of the Triton kernels (rewritten without a GPU, sixth session);
#  1. the default fast path against the plain one, robnet_free, forward / PGD-20 / PGD-7 step, fp32 (the H100 table);
#  2. compiled + bf16 PGD-20 and PGD-7 step: the weight update is now compiled too (train.compile /
#     compile_for_training; it took ~40 % of the compiled bf16 step on the H200 when it ran eagerly), the
#     weights kept in bf16 (no casts in the graph), and the fast path at batch 1024 (it needs ~1/4 of the plain
#     path's memory in bf16, and at 256 its ~20 us kernels pay fixed costs); the plain path at the original's 256;
#  3. the separable-conv halves shape by shape, bf16: cuDNN against a sweep of Triton tilings
#     (benchmarks/sepconv_kernels.py) - which tiling, if any, comes near memory speed. Every swept tiling
#     compiles for sm_90, in the direction it is a candidate for, without register spills and with vector
#     loads (benchmarks/triton_static.py, checked on the CPU);
#  4. the tuned engine end to end, bf16 PGD-20: each half's forward and backward run whichever of cuDNN and five
#     Triton tilings was fastest on its shape (timed in the warm-up; the choices are printed after the table).
#     Never slower than cuDNN per half beyond noise; faster wherever a tiling wins. (The old kernels: 0.24x.)
#  5. robnet_large_v2's PGD-7 training step, fp32, batch 128 (the benchmark table's one empty GPU cell; last, so
#     that a short budget cuts it first).
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
echo "== 0. the rewritten Triton kernels against PyTorch on CUDA (first: a wrong alignment hint would fault)"
# eight cases that each compile their own kernels (~1-2 s per kernel): in parallel where pytest-xdist is installed
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
timeout ${CHECK_T:-60} python3 -m pytest -q -rf --tb=short -p no:cacheprovider $XDIST -k cuda tests/test_triton_kernels.py \
  2>&1 | tail -5
echo "== 1. default fast path vs plain, fp32"
timeout ${DEFAULT_T:-55} python3 benchmarks/throughput.py --device cuda --models robnet_free --iters 4 \
  --out "$OUT/default" 2>&1 | tail -8
echo "== 2. compiled (attack engine and weight update) + bf16"
timeout ${COMPILE_T:-220} python3 benchmarks/throughput.py --device cuda --models robnet_free --compile --bf16 \
  --batch-size 256 --fast-batch-size ${FAST_BATCH:-1024} --iters 4 --workloads pgd20,train_pgd7 \
  --out "$OUT/compile-bf16" 2>&1 | tail -8
echo "== 3. separable-conv halves: cuDNN vs Triton tilings, bf16"
timeout ${KERNELS_T:-100} python3 benchmarks/sepconv_kernels.py --device cuda --model robnet_free --batch 256 \
  --dtype bf16 --configs sweep --shapes ${SHAPES:-3} --iters 10 --budget-s $(( ${KERNELS_T:-100} - 25 )) \
  --json "$OUT/sepconv-bf16.json" 2>&1 | tail -80
echo "== 4. tuned engine (cuDNN or a Triton tiling per shape and direction), bf16 PGD-20"
ROBNETS_TUNING_CACHE=$OUT/tuning.json timeout ${TUNED_T:-100} python3 benchmarks/throughput.py --device cuda \
  --models robnet_free --kernels tuned --bf16 --iters 2 --workloads pgd20 --out "$OUT/tuned-bf16" 2>&1 | tail -30
echo "== 5. robnet_large_v2, PGD-7 training step, fp32"
timeout ${LARGE_T:-40} python3 benchmarks/throughput.py --device cuda --models robnet_large_v2 --batch-size 128 \
  --iters 1 --workloads train_pgd7 --out "$OUT/large_v2" 2>&1 | tail -4
} 2>&1 | tee "$OUT/issue3_next.log"
rm -f "$OUT"/*/*.md  # at most 8 files come back; the tables are in the log, the numbers in the JSON
