"""Our AutoAttack attacks against torchattacks', per attack, on the same robust points of the same model.

    python benchmarks/autoattack_vs_torchattacks.py [--checkpoint W | tiny CNN] [--n 64] [--threads 2]

torchattacks' ``AutoAttack(version="standard")`` runs APGD-CE, APGD-T and FAB-T with its defaults, 10
iterations, where the official standard version uses 100; this script times both settings of theirs next to
ours (100) on the points still robust after our APGD-CE, and prints each attack's time and robust accuracy
as a markdown table. Without ``--checkpoint`` the model is the test suite's cross-check model: a tiny CNN
adversarially trained for a few seconds on 400 embedded CIFAR-10 images (overheads dominate there, which is
what this comparison is for). Needs torchattacks (``pip install torchattacks``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from robnets.attacks import APGD
from robnets.attacks.autoattack import APGDT, FAB, Square
from robnets.data import load_sample
from robnets.evaluation.crosscheck import tiny_robust_cnn
from robnets.models.checkpoint import load_model

EPS = 8 / 255


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="weights of a RobNet (default: the tiny robust CNN)")
    parser.add_argument("--model", default="robnet_free", help="architecture of --checkpoint")
    parser.add_argument("--n", type=int, default=64, help="embedded CIFAR-10 images")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        import torchattacks
    except ImportError:
        print("error: this comparison needs torchattacks; install it with `pip install torchattacks`", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        model = load_model(args.checkpoint, args.model).eval()
        x, y = load_sample().batch(0, args.n)
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the suite's model is trained on one thread (reproducible)
        x, y = load_sample().batch(0, 400)
        model = tiny_robust_cnn(x, y)
        torch.set_num_threads(args.threads or threads)
        x, y = x[:args.n], y[:args.n]
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        kept = model(APGD(model, norm="Linf", eps=EPS, n_iter=100, seed=0)(x, y)).argmax(1) == y
    xr, yr = x[kept], y[kept]
    rows = []

    def timed(name: str, iterations: str, attack) -> None:  # noqa: ANN001
        start = time.perf_counter()
        x_adv = attack(xr, yr)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            robust = 100.0 * (model(x_adv).argmax(1) == yr).float().mean().item()
        rows.append((name, iterations, seconds, robust))
        print(f"{name:28s} {iterations:>6s} {seconds:7.2f} s  robust {robust:5.1f} %", flush=True)

    ta = torchattacks
    timed("ours APGD-T", "100", APGDT(model, norm="Linf", eps=EPS, seed=0))
    timed("torchattacks APGD-T", "10", ta.APGDT(model, norm="Linf", eps=EPS, n_classes=10, seed=0))
    timed("torchattacks APGD-T", "100", ta.APGDT(model, norm="Linf", eps=EPS, n_classes=10, seed=0, steps=100))
    timed("ours FAB-T", "100", FAB(model, norm="Linf", eps=EPS, targeted=True, seed=0))
    timed("torchattacks FAB-T", "10", ta.FAB(model, norm="Linf", eps=EPS, multi_targeted=True, n_classes=10, seed=0))
    timed("torchattacks FAB-T", "100",
          ta.FAB(model, norm="Linf", eps=EPS, multi_targeted=True, n_classes=10, seed=0, steps=100))
    timed("ours Square", "5000", Square(model, norm="Linf", eps=EPS, seed=0))
    timed("torchattacks Square", "5000", ta.Square(model, norm="Linf", eps=EPS, n_queries=5000, seed=0))
    print(f"\n{len(yr)} points robust after APGD-CE (of {len(y)}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| attack | iterations | seconds | robust % |\n|---|---:|---:|---:|")
    for name, iterations, seconds, robust in rows:
        print(f"| {name} | {iterations} | {seconds:.2f} | {robust:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
