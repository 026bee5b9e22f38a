"""AutoAttack-standard speed: images/s of the whole cascade and time per attack, on a given model.

    python benchmarks/autoattack_speed.py --checkpoint W --n 100 --threads 2 [--device cpu|cuda]
    python benchmarks/autoattack_speed.py --model robnet_free --n 8 --apgd-only     # per-image APGD-CE cost

AutoAttack's cost depends on the model's robustness (each attack only runs on points still robust), so the
cascade is timed on an adversarially trained model; ``--apgd-only`` times APGD-CE (100 iterations, the
cascade's first attack, which runs on every correctly classified point) with labels set to the model's own
predictions, so every point is attacked: a robustness-independent per-image cost that lets one scale the
cascade's rate to another architecture. Prints a markdown table; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from robnets.acceleration import accelerate
from robnets.attacks import APGD, AutoAttack
from robnets.data import load_sample
from robnets.models import create_model
from robnets.models.loading import load_model
from robnets.runtime import resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="robnet_free", help="registered model (random weights) if no --checkpoint")
    parser.add_argument("--checkpoint", help="weights (this project's safetensors, or an original checkpoint)")
    parser.add_argument("--n", type=int, default=100, help="embedded CIFAR-10 sample images")
    parser.add_argument("--bs", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--apgd-only", action="store_true")
    parser.add_argument("--plain", action="store_true", help="run the model as is (default: the fast path, as "
                        "robnets eval does)")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint) if args.checkpoint else create_model(args.model)
    model = model.to(device).eval()
    execution = "plain"
    if not args.plain:
        model, execution = accelerate(model, device)
    x, y = load_sample().batch(0, args.n)
    x, y = x.to(device), y.to(device)
    row: dict = {"model": args.checkpoint or args.model, "n": args.n, "device": str(device),
                 "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "execution": execution,
                 "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    if args.apgd_only:
        with torch.no_grad():
            y = torch.cat([model(x[i:i + args.bs]).argmax(1) for i in range(0, args.n, args.bs)])
        attack = APGD(model, eps=8 / 255, steps=100, seed=0)
        start = time.perf_counter()
        for i in range(0, args.n, args.bs):
            attack(x[i:i + args.bs], y[i:i + args.bs])
        seconds = time.perf_counter() - start
        row.update(attack="apgd-ce (100 iterations, every point attacked)", seconds=round(seconds, 2),
                   images_per_s=round(args.n / seconds, 3))
        print("| model | attack | n | seconds | images/s |\n| --- | --- | ---: | ---: | ---: |")
        print(f"| {row['model']} | {row['attack']} | {args.n} | {seconds:.1f} | {row['images_per_s']} |")
    else:
        start = time.perf_counter()
        aa = AutoAttack(model, norm="Linf", eps=8 / 255, version="standard", seed=0,
                        log=lambda m: print(f"[{time.perf_counter() - start:7.1f} s] {m}", file=sys.stderr, flush=True))
        aa.run_standard_evaluation(x, y, bs=args.bs)
        seconds = time.perf_counter() - start
        per_attack = aa.seconds
        row.update(attack="autoattack standard (Linf, 8/255)", seconds=round(seconds, 2),
                   images_per_s=round(args.n / seconds, 3), clean=100 * aa.clean_accuracy,
                   robust=100 * aa.robust_accuracy, per_attack_seconds=per_attack, engine=aa.describe()["engine"])
        print("| model | n | clean % | AA robust % | seconds | images/s | per attack (s) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        print(f"| {row['model']} | {args.n} | {row['clean']:.1f} | {row['robust']:.1f} | {seconds:.1f} | "
              f"{row['images_per_s']} | {', '.join(f'{k} {v}' for k, v in per_attack.items())} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(row, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
