"""Separable-conv halves of a RobNet, one shape at a time: PyTorch's kernels against Triton kernel configs.

Lists the distinct separable-conv-half shapes of one forward (with counts) and times, for each, the forward
and the input-gradient backward of PyTorch's kernels (cuDNN on CUDA) and of the fused Triton kernels under
each tiling in ``--configs``, with the GB/s each reaches against the bytes a fused kernel must move. The
summary weights each shape by its count: the separable-conv time of one attack step per implementation.
Triton runs on CUDA only (the CPU interpreter is for correctness, not speed); on CPU only PyTorch is timed.

    python benchmarks/sepconv_kernels.py --device cuda --model robnet_free --batch 256 --dtype bf16 \\
        --configs sweep --json /tmp/out/sepconv.json

``--configs``: ``none``, ``default`` (the library's forward and backward tilings), ``sweep`` (sixteen tilings,
each compiling for sm_90 without register spills and with vector loads in the direction it is a candidate for:
fused forward and backward candidates and four ``-split`` ones, Triton depthwise + cuBLAS 1x1; see
``benchmarks/triton_static.py``) or a comma list of labels
such as ``p64-ci16-co64-w4-s2`` / ``...-split``. ``--shapes N`` keeps the N most frequent shapes (compilation
costs ~1 s per shape and config on a GPU).
"""

from __future__ import annotations

import argparse
import sys

import torch

from robnets import RobnetsError
from robnets.acceleration.sepconv_bench import kernel_configs, sep_half_shapes, summary_table, sweep, write_results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="robnet_free")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--configs", default="default", help="none | default | sweep | label,label,...")
    parser.add_argument("--shapes", type=int, default=0, help="keep the N most frequent shapes (0: all)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new timing after this many seconds; the table shows what was measured")
    parser.add_argument("--json", default=None, help="write every timing here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible; use --device cpu")
    try:
        configs = kernel_configs(args.configs)
    except ValueError as exc:
        raise SystemExit(f"error: --configs: {exc}") from None
    if configs and device.type != "cuda":
        print("note: Triton kernels are timed on CUDA only; timing PyTorch's kernels alone", file=sys.stderr)
        configs = []
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    try:
        shapes = sep_half_shapes(args.model, args.batch)
    except RobnetsError as exc:
        raise SystemExit(f"error: --model: {exc}") from None
    total = sum(s.count for s in shapes)
    if args.shapes:
        shapes = shapes[: args.shapes]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.model}, batch {args.batch}, {args.dtype}, {name}, torch {torch.__version__}: "
          f"{len(shapes)} shapes, {sum(s.count for s in shapes)} of the {total} separable-conv halves per forward",
          flush=True)
    timings = sweep(shapes, device, dtype, configs, iters=args.iters,
                    log=lambda line: print(line, flush=True), budget_s=args.budget_s)
    table = summary_table(timings)
    print()
    print(table)
    if args.json:
        meta = {"model": args.model, "batch_size": args.batch, "dtype": args.dtype, "device": name}
        path = write_results(args.json, meta, "timings", [t.to_dict() for t in timings], table)
        print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
