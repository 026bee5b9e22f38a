"""The same evaluation as one process with T threads against P torchrun processes with T/P threads each.

    python benchmarks/eval_processes.py --weights robnet_compact --n 200 --attacks clean,pgd20 --threads 2
    python benchmarks/eval_processes.py --weights robnet_compact --n 400 --gpus 4 --device cuda   # 1 vs N GPUs

Both runs are `robnets eval` on the embedded CIFAR-10 sample, timed from launch to the merged result (start-up,
loading and merging included, as a user experiences them); the per-point results of the two runs are compared
as well (they must be identical: the block rule). Prints a markdown row; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], threads: int, visible: str | None = None) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"eval_processes: {' '.join(command[:6])} ... failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="robnet_compact")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--attacks", default="clean,pgd20")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--block-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all (CPU runs)")
    parser.add_argument("--gpus", type=int, default=0, help="compare 1 GPU with this many (CUDA runs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    processes = args.gpus or args.threads
    common = ["--weights", args.weights, "--sample", "--n-points", str(args.n), "--attacks", args.attacks,
              "--batch-size", str(args.batch_size), "--set", f"eval.block_size={args.block_size}", "--sanity", "off",
              "--no-progress", "--device", args.device]
    with tempfile.TemporaryDirectory() as tmp:
        one_out, many_out = Path(tmp) / "one", Path(tmp) / "many"
        one = run([sys.executable, "-m", "robnets", "eval", *common, "--output-dir", str(one_out)],
                  threads=args.threads, visible="0" if args.gpus else None)
        many = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_port", "29651", "-m", "robnets", "eval", *common, "--output-dir", str(many_out)],
                   threads=max(1, args.threads // processes) if not args.gpus else args.threads)
        same = (json.loads((one_out / "results.json").read_text())["per_example"]
                == json.loads((many_out / "results.json").read_text())["per_example"])
    what = f"{args.gpus} GPUs" if args.gpus else f"{processes} processes x {max(1, args.threads // processes)} thread"
    base = "1 GPU" if args.gpus else f"1 process x {args.threads} threads"
    row = {"weights": args.weights, "n": args.n, "attacks": args.attacks, "baseline": base, "sharded": what,
           "baseline_s": round(one, 1), "sharded_s": round(many, 1), "speedup": round(one / many, 2),
           "identical_per_point": same, "torch": torch.__version__, "machine": platform.machine(),
           "cpus": os.cpu_count()}
    print(f"| {args.weights} | {args.attacks} | {args.n} | {base}: {one:.1f} s | {what}: {many:.1f} s | "
          f"{one / many:.2f}x | {'yes' if same else 'NO'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
