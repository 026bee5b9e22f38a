"""How fast could PGD-20 be if it were memory-bound? Bytes per image moved by one attack step, three ways.

For the plain path (the original execution) and the fast path, in fp32 and bf16 autocast, counts the bytes
every operator reads and writes in one attack step (forward + input gradient) and one scoring forward
(``robnets.acceleration.traffic``), then divides a GPU's memory bandwidth by the bytes of a PGD-20
evaluation for three execution strategies: op by op (eager), convolutions only (every element-wise
operator fused away), fused separable convs (the depthwise result kept on chip). Runs on CPU (about 25 s
per model on 2 cores; traffic does not depend on the device; batch 2, scaled per image).

    python benchmarks/memory_bound.py --models robnet_free,robnet_large_v1 --bandwidth-tbs 4.3,3.0

Bandwidths as a device-to-device copy reaches them (bytes read + written): H200 about 4.3 TB/s, H100 about
3.0 TB/s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.measure
import robnets  # noqa: E402
from benchmarks.measure.traffic import attack_step_traffic, pgd_bound_images_per_s  # noqa: E402
from robnets.acceleration import FastRobNet  # noqa: E402

STRATEGIES = ("op_by_op", "convolutions", "fused_separable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="robnet_free")
    parser.add_argument("--bandwidth-tbs", default="4.3,3.0", help="memory bandwidths in TB/s (read + write)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args()
    bandwidths = [float(b) * 1e12 for b in args.bandwidth_tbs.split(",")]
    rows, report = [], []
    x, y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2])
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        torch.manual_seed(0)
        model = robnets.create_model(name).eval()
        for precision in ("fp32", "bf16"):
            for path in ("plain", "fast"):
                model.set_reference_mode(path == "plain")
                engine = model if path == "plain" else FastRobNet(model)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    step = attack_step_traffic(engine, x, y)
                    forward = attack_step_traffic(engine, x, y, backward=False)
                model.set_reference_mode(False)
                per_image = step.per_image()
                for strategy in STRATEGIES:
                    if path == "plain" and strategy != "op_by_op":
                        continue  # the plain path is op by op by definition
                    bounds = [pgd_bound_images_per_s(step, forward, args.steps, bw, strategy) for bw in bandwidths]
                    rows.append(f"| {name} | {precision} | {path} | {strategy} | {per_image[strategy] / 1e6:.1f} | "
                                + " | ".join(f"{b:,.0f}" for b in bounds) + " |")
                    report.append({"model": name, "precision": precision, "path": path, "strategy": strategy,
                                   "step_bytes_per_image": per_image[strategy],
                                   "forward_bytes_per_image": forward.per_image()[strategy],
                                   "pgd_bound_images_per_s": dict(zip(args.bandwidth_tbs.split(","), bounds))})
                print(f"  {name} {precision} {path}: {per_image['op_by_op'] / 1e6:.1f} MB/image/step op by op",
                      file=sys.stderr)
    head = " | ".join(f"PGD-{args.steps} img/s at {b} TB/s" for b in args.bandwidth_tbs.split(","))
    print(f"| model | precision | path | strategy | MB per image per attack step | {head} |")
    print("|---|---|---|---|---:|" + "---:|" * len(bandwidths))
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
