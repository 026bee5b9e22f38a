"""AutoAttack (the reference implementation, pyautoattack, through robnets.attacks.AutoAttack) on the first N
CIFAR-10 test images, for a robnets weights file. Writes JSON: clean and robust accuracy after every attack of
the cascade with its seconds, n, and the checks of the returned points. Resumable chunk by chunk: the state
file records the weights, points and settings it belongs to and is refused for anything else.

Usage: python autoattack_eval.py --checkpoint W --data-dir D --n 200 --output OUT.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from robnets.attacks import AutoAttack
from robnets.data import load_dataset
from robnets.errors import RobnetsError
from robnets.io import sha256_file, write_json_atomic
from robnets.models.loading import load_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    out = Path(args.output)
    model = load_model(args.checkpoint).eval()
    x, y = load_dataset("cifar10", "test", args.data_dir).batch(0, args.n)
    aa = AutoAttack(model, norm="Linf", eps=args.eps, version="standard", seed=0,
                    log=lambda line: print(f"  [autoattack] {line}", file=sys.stderr, flush=True))
    started = time.perf_counter()
    x_adv = aa.run_standard_evaluation(x, y, bs=args.batch_size, state_path=out.with_suffix(".state.safetensors"))
    linf = (x_adv - x).abs().flatten(1).max(1).values.max().item()
    result = {
        "checkpoint": str(args.checkpoint), "sha256": sha256_file(args.checkpoint),
        "dataset": "cifar10 test, first n images", "n": args.n, **aa.describe(), "torch": torch.__version__,
        "clean_accuracy": 100 * aa.clean_accuracy, "robust_accuracy": 100 * aa.robust_accuracy,
        "per_attack": [{"attack": name, "robust_accuracy": 100 * acc, "seconds": aa.seconds[name]}
                       for name, acc in aa.robust_accuracy_history],
        "seconds": round(sum(aa.seconds.values()), 1), "seconds_this_call": round(time.perf_counter() - started, 1),
        "checks": {"max_linf": linf, "within_eps": linf <= args.eps + 1e-5,
                   "in_unit_box": bool(x_adv.min() >= 0 and x_adv.max() <= 1)},
    }
    write_json_atomic(out, result)
    print(f"AutoAttack ({result['engine']}, standard, Linf {args.eps * 255:.0f}/255, n={args.n}): clean "
          f"{result['clean_accuracy']:.2f} %, robust {result['robust_accuracy']:.2f} %; {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RobnetsError as exc:
        print(f"autoattack_eval: error: {exc}", file=sys.stderr)
        sys.exit(2)
