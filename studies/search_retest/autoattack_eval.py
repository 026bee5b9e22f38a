"""AutoAttack with the reference implementation (Croce & Hein's code, PyPI ``pyautoattack``) on the first N
CIFAR-10 test images, for a robnets weights file. Writes JSON: clean and robust accuracy after every attack of
the cascade, seconds, n, and checks of the returned points (inside the eps-ball and [0, 1], and the final
robust accuracy re-measured on them). Resumable: the reference's own state file, named after the weights'
sha256, n and eps, so that it is never applied to another model or subset.

Usage: python autoattack_eval.py --checkpoint W --data-dir D --n 200 --output OUT.json
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

import torch

from robnets.data import load_dataset
from robnets.io import sha256_file, write_json_atomic
from robnets.models.checkpoint import load_model

AFTER = re.compile(r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)")


class _Collect(logging.Handler):
    """Keeps the reference's per-attack lines (robust accuracy after each attack, cumulative seconds)."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.path = path
        self.rows = json.loads(path.read_text()) if path.is_file() else []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        print(f"  [autoattack] {message}", file=sys.stderr, flush=True)
        match = AFTER.search(message)
        if match:
            self.rows.append({"attack": match.group(1).lower(), "robust_accuracy": float(match.group(2)),
                              "cumulative_seconds_this_call": float(match.group(3))})
            write_json_atomic(self.path, self.rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    try:
        from pyautoattack import AutoAttack
        from pyautoattack import __version__ as aa_version
    except ImportError:
        print("autoattack_eval: needs the reference AutoAttack: pip install 'pyautoattack>=0.2'", file=sys.stderr)
        return 2

    torch.manual_seed(0)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = sha256_file(args.checkpoint)
    state = out.with_name(f"{out.stem}.state-{digest[:16]}-n{args.n}-eps{args.eps:.6f}.json")
    model = load_model(args.checkpoint).eval()
    data = load_dataset("cifar10", "test", args.data_dir)
    x, y = data.batch(0, args.n)
    x = x.contiguous()  # the reference calls .view on input gradients

    collect = _Collect(out.with_name(f"{out.stem}.per-attack.json"))
    logger = logging.getLogger("auto-attack")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(collect)
    attack = AutoAttack(model, norm="Linf", eps=args.eps, version="standard", seed=0, device="cpu")
    started = time.perf_counter()
    x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=args.batch_size, state_path=state)
    seconds = time.perf_counter() - started

    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item() * 100
        robust = (model(x_adv).argmax(1) == y).float().mean().item() * 100
    linf = (x_adv - x).abs().flatten(1).max(1).values.max().item()
    result = {
        "checkpoint": str(args.checkpoint), "sha256": digest, "dataset": "cifar10 test, first n images",
        "n": args.n, "norm": "Linf", "eps": args.eps, "version": "standard", "seed": 0,
        "engine": f"pyautoattack {aa_version} (reference implementation)", "torch": torch.__version__,
        "clean_accuracy": clean, "robust_accuracy": robust, "per_attack": collect.rows,
        "seconds_this_call": round(seconds, 1),
        "checks": {"max_linf": linf, "within_eps": linf <= args.eps + 1e-5,
                   "in_unit_box": bool(x_adv.min() >= 0 and x_adv.max() <= 1),
                   "finite": bool(torch.isfinite(x_adv).all())},
    }
    write_json_atomic(out, result)
    print(f"AutoAttack (reference, standard, Linf {args.eps * 255:.0f}/255, n={args.n}): clean {clean:.2f} %, "
          f"robust {robust:.2f} %; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
