"""Plain (original) vs fast execution: images/s for forward, PGD-20 evaluation and a PGD-7 training step,
FLOPs per image, achieved TFLOP/s and peak memory, for RobNets and a baseline, in one run on one device.

    python benchmarks/throughput.py                          # CUDA if present, else CPU
    python benchmarks/throughput.py --device cpu --batch-size 16 --models robnet_free,preact_resnet18
    python benchmarks/throughput.py --device cuda --max-batch --profile
    python benchmarks/throughput.py --device cuda --models robnet_free --compile --bf16 --fast-batch-size 1024

Writes <out>/throughput-<device>-<date>.{json,md} (default out: runs/benchmarks). Speed targets live here, never in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.measure
from benchmarks.measure.throughput import largest_batch, measure_model, profile_fast_pgd_step, ratio_table  # noqa: E402
from robnets.errors import RobnetsError  # noqa: E402
from robnets.runtime import resolve_device  # noqa: E402

DEFAULT_MODELS = "robnet_free,robnet_large_v1,robnet_large_v2,preact_resnet18"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, help="default: 256 on CUDA, 16 on CPU")
    parser.add_argument("--fast-batch-size", type=int,
                        help="the fast path's batch when it should differ from --batch-size (the plain path's): "
                             "it needs about half the memory, so a larger batch fits (--max-batch finds the largest)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 10 CUDA, 2 CPU)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both paths")
    parser.add_argument("--workloads", default="forward,pgd20,train_pgd7")
    parser.add_argument("--max-batch", action="store_true", help="also find the largest batch (CUDA)")
    parser.add_argument("--profile", action="store_true", help="profile one fast PGD step of robnet_free")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--compile", action="store_true",
                        help="run the fast path (attack engine and the training step's weight update) through "
                             "torch.compile (ROBNETS_COMPILE=1; compile time is in the untimed warm-up: minutes "
                             "for robnet_free)")
    parser.add_argument("--out", default="runs/benchmarks", help="folder for the result files")
    args = parser.parse_args()

    if args.compile:
        os.environ["ROBNETS_COMPILE"] = "1"
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size or (256 if device.type == "cuda" else 16)
    for flag, value in (("--batch-size", args.batch_size), ("--fast-batch-size", args.fast_batch_size)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be a positive number of images, got {value}")
    fast_batch = args.fast_batch_size or batch
    iters = args.iters or (10 if device.type == "cuda" else 2)
    precision = "bf16" if args.bf16 else "fp32"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    workloads = tuple(w.strip() for w in args.workloads.split(","))
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "device_type": device.type, "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
           "batch_size": batch, "fast_batch_size": fast_batch, "precision": precision, "iters": iters, "fast_path_compiled": args.compile, "date": time.strftime("%Y-%m-%d %H:%M")}
    batches = f"batch {batch}" if fast_batch == batch else f"batch {batch} (plain) / {fast_batch} (fast)"
    print(f"# throughput on {env['device']} ({device.type}), torch {env['torch']}, {batches}, {precision}, "
          f"{env['cpu_threads']} CPU threads", file=sys.stderr)

    measurements = []
    for name in models:
        measurements += measure_model(name, device, batch, iters=iters, precision=precision, workloads=workloads,
                                      fast_batch_size=fast_batch, skip_out_of_memory=device.type == "cuda",
                                      log=lambda m: print(m, file=sys.stderr))
    table = ratio_table(measurements)
    print(table)
    extra = {}
    if args.max_batch and device.type == "cuda":
        extra["largest_pgd_batch"] = {name: largest_batch(name, device) for name in models}
        print(f"\nlargest power-of-two batch for a fast PGD step: {extra['largest_pgd_batch']}")
    profile = profile_fast_pgd_step("robnet_free", device, batch) if args.profile else None
    if profile:
        print("\n" + profile)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"throughput-{device.type}-{time.strftime('%Y%m%d-%H%M')}"
    (out / f"{stem}.json").write_text(json.dumps(
        {"environment": env, **extra, "measurements": [m.to_dict() for m in measurements]}, indent=2) + "\n")
    md = [f"# Throughput: plain vs fast ({env['device']}, {device.type})", "",
          "| " + " | ".join(f"{k}: {v}" for k, v in env.items()) + " |", "", table]
    if profile:
        md += ["", "## Profile of one fast PGD step (robnet_free)", "", "```", profile, "```"]
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print(f"\nwrote {out / stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RobnetsError as exc:  # bad settings: one line, no traceback
        sys.exit(f"throughput.py: error: {exc}")
