"""CPU threads: one training step's time with 1 thread, with every core, and with robnets' default, on an idle
machine and while another job keeps the cores busy.

    python benchmarks/threads.py [--model robnet_large_v1 --C 8 --batch 64] [--json OUT]

Each setting runs in a fresh process (the thread count is fixed before the first step); the competing job is
another torch process training the same network with torch's default threads. The robnets default
(``robnets.runtime.default_threads``) takes the cores the 1-minute load average leaves idle; the load average
needs about a minute to see a new job, so the competing job runs for 70 s before the busy measurements.
Prints a markdown table (median of the measured steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP = r"""
import os, sys, time, torch
from robnets.runtime import configure_threads
threads = configure_threads(int(sys.argv[1]) if sys.argv[1] != "default" else None)
from robnets.models import create_model
model = create_model(sys.argv[2], C=int(sys.argv[3]), layers=5)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.rand(int(sys.argv[4]), 3, 32, 32), torch.randint(0, 10, (int(sys.argv[4]),))
times = []
for _ in range(int(sys.argv[5])):
    began = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - began)
print(threads, sorted(times[1:])[len(times[1:]) // 2])
"""


def step(threads: str, args: argparse.Namespace, steps: int = 5) -> tuple[int, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ROBNETS_THREADS")}
    done = subprocess.run([sys.executable, "-c", STEP, threads, args.model, str(args.C), str(args.batch), str(steps)],
                          cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True,
                          check=True)
    count, seconds = done.stdout.split()
    return int(count), float(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="robnet_large_v1")
    parser.add_argument("--C", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    for condition in ("idle", "busy"):
        job = None
        if condition == "busy":
            job = subprocess.Popen([sys.executable, "-c", STEP, str(cores), args.model, str(args.C), str(args.batch),
                                    "100000"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(70)  # the load average sees it
        try:
            for setting in ("1", str(cores), "default"):
                count, seconds = step(setting, args)
                rows.append({"machine": condition, "setting": setting, "threads": count, "seconds": seconds,
                             "load": round(os.getloadavg()[0], 2)})
        finally:
            if job is not None:
                job.kill()
                job.wait()
    print("| machine | threads asked | threads used | step (s) |\n|---|---|---:|---:|")
    for r in rows:
        label = "robnets default" if r["setting"] == "default" else r["setting"]
        print(f"| {r['machine']} (load {r['load']}) | {label} | {r['threads']} | {r['seconds']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cores": cores, "model": args.model, "C": args.C, "batch": args.batch,
                                               "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
