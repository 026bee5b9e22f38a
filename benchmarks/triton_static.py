"""What the Triton separable-conv kernels compile to on an H100/H200 (sm_90), without a GPU.

Compiles the forward and input-gradient kernels of each tiling for each separable-conv-half shape of a model,
exactly as ``triton_sep_half`` would launch them, and prints per kernel: registers per thread, spills (stack,
local loads/stores), shared memory, the occupancy an sm_90 SM allows, the SASS instruction count and the global
loads by width. A kernel that spills or loads one element at a time will not reach memory speed; which of the
clean ones is fastest still needs the GPU (``benchmarks/sepconv_kernels.py``).

    python benchmarks/triton_static.py --model robnet_free --dtype bf16 --configs default --shapes 3
    python benchmarks/triton_static.py --configs sweep --json results/triton-static/robnet_free-bf16.json

``--configs``: ``default`` (the library's forward and backward tilings), ``sweep`` (the tilings
``benchmarks/sepconv_kernels.py`` times) or a comma list of labels such as ``p64-ci16-co64-w4-s2`` /
``...-split``. Compiling costs 1-3 s of CPU per kernel (cached by Triton afterwards).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from robnets import RobnetsError
from robnets.acceleration.sepconv_bench import kernel_configs, sep_half_shapes, write_results
from robnets.acceleration.triton_static import analyse, resource_table, static_analysis_available


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="robnet_free")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--configs", default="default", help="default | sweep | label,label,...")
    parser.add_argument("--shapes", type=int, default=0, help="keep the N most frequent shapes (0: all)")
    parser.add_argument("--directions", default="forward,backward", help="forward, backward or both")
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 to compile for (90: H100/H200; the occupancy column uses sm_90's limits)")
    parser.add_argument("--json", default=None, help="write every row here (and the table beside it, .md)")
    args = parser.parse_args()
    ok, why = static_analysis_available()
    if not ok:
        raise SystemExit(f"error: cannot compile Triton kernels ahead of time here: {why}; pip install triton")
    try:
        configs = kernel_configs(args.configs)
    except ValueError as exc:
        raise SystemExit(f"error: --configs: {exc}") from None
    if args.configs == "default":
        configs = [tuple(configs)]  # the default forward tiling for the forward, the backward one for the backward
    directions = tuple(d.strip() for d in args.directions.split(",") if d.strip())
    if not directions or any(d not in ("forward", "backward") for d in directions):
        raise SystemExit(f"error: --directions takes forward, backward or forward,backward; got {args.directions!r}")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    try:
        shapes = sep_half_shapes(args.model, args.batch)
    except RobnetsError as exc:
        raise SystemExit(f"error: --model: {exc}") from None
    if args.shapes:
        shapes = shapes[: args.shapes]
    print(f"{args.model}, batch {args.batch}, {args.dtype}, sm_{args.arch}: {len(shapes)} shapes x "
          f"{len(configs)} configs", flush=True)
    start = time.perf_counter()

    def progress(row: dict) -> None:
        print(f"  {time.perf_counter() - start:5.0f} s  {row['shape']:22s} {row['config']:28s} "
              f"{row['direction']:8s} regs {row['registers']:3d}  stack {row['stack_bytes']:4d} B  "
              f"occupancy {row['occupancy']:.0%}", flush=True)

    rows = analyse(shapes, configs, dtype, arch=args.arch, directions=directions, progress=progress)
    table = resource_table(rows)
    print()
    print(table)
    if args.json:
        import triton

        meta = {"model": args.model, "batch_size": args.batch, "dtype": args.dtype, "arch": args.arch,
                "triton": triton.__version__}
        path = write_results(args.json, meta, "rows", rows, table)
        print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
