"""Fault trials: kill -9 a tiny training run, a tiny search, a tiny AutoAttack run and a sharded evaluation at
seeded progress points, resume each to the end, and compare the result with an uninterrupted run (bitwise).

    python -m tests.fault_trials --trials 10 [--kinds train,search,autoattack,eval] [--json OUT]

Each trial draws its kill moments from its own seed as progress points, not seconds: the run is killed as soon
as its files show it has reached a drawn point of its work (a training step, a supernet step or scored
candidate, an AutoAttack chunk, an evaluation block), drawn among the points still to come, plus a drawn
fraction of the time one point takes (so some kills land in start-up, some in the middle of a write). Every
kill therefore lands in work still to do, however fast or loaded the machine is. The run is started, killed,
resumed and killed again until a resume finishes. The sharded evaluation's two shard jobs are each killed and
restarted on their own, then merged, and no block may have been computed twice. The test suite runs one trial
per kind (tests/test_fault_trials.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
TRAIN = ["model.name=robnet_large_v1", "model.C=4", "model.layers=3", "train.batch_size=16", "train.val_size=32",
         "train.train_size=96", "train.method=fgsm_rs", "train.epochs=2", "train.warmup_epochs=0",
         "train.checkpoint_every_steps=1", "train.co_probe_size=16", "train.val_attack_steps=2", "train.device=cpu"]
SEARCH = ["search.C=4", "search.layers=3", "search.supernet_epochs=1", "search.supernet_max_steps=6",
          "search.batch_size=16", "search.num_samples=3", "search.finetune_steps=2", "search.eval_size=16",
          "search.eval_attack_steps=2", "search.fsp_size=8", "search.val_size=32", "search.bn_recalibration_batches=1",
          "search.checkpoint_every_steps=1", "search.device=cpu", "search.method=fgsm_rs"]


EVAL = ["--attacks", "clean,pgd3,fgsm,autoattack", "--n-points", "12", "--batch-size", "3", "--set",
        "eval.block_size=3", "--eps", "2/255", "--sanity", "off", "--device", "cpu", "--no-progress"]
EVAL_SHARDS = 2


def make_data(root: Path) -> Path:
    """A CIFAR-10 folder (npz layout) of the embedded real sample: 320 train, 180 test images; and the tiny trained
    RobNet the evaluation trials attack (``weights.safetensors`` beside it)."""
    from tests.helpers import tiny_robnet_weights

    tiny_robnet_weights(root / "weights.safetensors", epochs=6)
    from robnets.data import load_sample

    sample = load_sample()
    images, labels = sample.images.numpy(), sample.labels.numpy()
    folder = root / "data" / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", images=images[:320], labels=labels[:320])
    np.savez(folder / "test.npz", images=images[320:], labels=labels[320:])
    return root / "data"


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def commands(kind: str, folder: Path, data: Path) -> tuple[list[str], list[str]]:
    """(start, resume) command lines of one run of ``kind`` in ``folder``."""
    py = [sys.executable, "-m"]
    if kind == "train":
        return ([*py, "robnets", "train", "--data-dir", str(data), "--output-dir", str(folder), "--no-progress",
                 *_sets(TRAIN)],
                [*py, "robnets", "train", "--resume", str(folder), "--data-dir", str(data), "--no-progress"])
    if kind == "search":
        config = str(REPO / "experiments" / "search_cifar10" / "config.yaml")
        return ([*py, "robnets", "search", "--config", config, "--data-dir", str(data), "--output-dir", str(folder),
                 "--no-progress", *_sets(SEARCH)],
                [*py, "robnets", "search", "--resume", str(folder), "--data-dir", str(data), "--no-progress"])
    if kind == "autoattack":
        worker = [*py, "tests.fault_trials", "--autoattack-worker", str(folder)]
        return worker, worker
    if kind.startswith("eval-shard"):  # eval-shardK: shard K of EVAL_SHARDS; the same command resumes it
        shard = [*py, "robnets", "eval", "--checkpoint", str(data.parent / "weights.safetensors"), "--dataset",
                 "cifar10", "--data-dir", str(data), "--output-dir", str(folder), *EVAL, "--shard",
                 f"{kind.removeprefix('eval-shard')}/{EVAL_SHARDS}"]
        return shard, shard
    raise ValueError(kind)


def eval_progress(folder: Path) -> int:
    """Finished blocks of an evaluation run folder (all its shards)."""
    return sum(len(p.read_text().splitlines()) for p in folder.glob("shard-*-of-*/blocks.jsonl"))


def autoattack_worker(folder: Path) -> None:
    """A tiny CNN (seeded) under the reference AutoAttack with a resumable state; writes x_adv.pt at the end."""
    from robnets.attacks import AutoAttack
    from robnets.data import load_sample
    from tests.helpers import tiny_cnn

    torch.set_num_threads(1)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_sample().batch(0, 400)
    model = tiny_cnn(x, y, width=8, epochs=20, lr=3e-3, adversarial=False)
    aa = AutoAttack(model, eps=2 / 255, version="custom", attacks=["apgd-ce", "apgd-t", "square"], log=None)
    x_adv = aa.run_standard_evaluation(x[:64], y[:64], bs=16, state_path=folder / "aa_state.safetensors")
    torch.save({"x_adv": x_adv, "history": aa.robust_accuracy_history}, folder / "x_adv.pt")


def outcome(kind: str, folder: Path) -> dict:
    """What must be equal between an interrupted and an uninterrupted run."""
    from safetensors.torch import load_file

    if kind == "train":
        return {k: v for k, v in load_file(folder / "final.safetensors").items()}
    if kind == "search":
        rows = json.loads((folder / "architectures.json").read_text())
        return {"rows": [{k: r.get(k) for k in ("genotype", "clean", "adv", "fsp", "status")} for r in rows],
                "supernet": load_file(folder / "supernet.safetensors")}
    if kind == "eval":
        merged = json.loads((folder / "results.json").read_text())
        return {"per_example": merged["per_example"], "partial": merged.get("partial", False),
                "rows": [(r["attack"], r["correct"], r["n"]) for r in merged["results"]]}
    saved = torch.load(folder / "x_adv.pt", weights_only=True)
    return {"x_adv": saved["x_adv"], "history": saved["history"]}


def equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal(x, z) for x, z in zip(a, b))
    return a == b


def progress(kind: str, folder: Path) -> int:
    """How far a run of ``kind`` in ``folder`` has come, read from its files (monotone across kills)."""
    if kind == "train":
        state = folder / "state.pt"
        if (folder / "final.safetensors").is_file():
            return 10 ** 9
        if not state.is_file():
            return 0
        try:
            saved = torch.load(state, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - replaced while read: no progress seen this time
            return 0
        return 1000 * int(saved["epoch"]) + int(saved["step"]) + 1
    if kind == "search":
        count = sum(len(p.read_text().splitlines()) for p in folder.glob("*.rank*.jsonl"))
        if (folder / "supernet.safetensors").is_file():
            return 10 ** 6 + count
        state = folder / "supernet_state.pt"
        try:
            return 1 + int(torch.load(state, map_location="cpu", weights_only=True)["step"]) if state.is_file() else 0
        except Exception:  # noqa: BLE001
            return 0
    if kind == "autoattack":
        if (folder / "x_adv.pt").is_file():
            return 10 ** 6
        state = folder / "aa_state.safetensors"
        if not state.is_file():
            return 0
        from safetensors import safe_open

        try:
            with safe_open(str(state), framework="pt") as handle:
                meta = json.loads(handle.metadata()["state"])
        except Exception:  # noqa: BLE001
            return 0
        return 1 + 1000 * len(meta["done"]) + int(meta["chunk"])
    return eval_progress(folder)


def run_once(cmd: list[str], kill_after: float | None, kill_when=None) -> int | None:  # noqa: ANN001
    """Run ``cmd``; kill -9 it after ``kill_after`` seconds, or as soon as ``kill_when()`` is true (None: let it
    finish). Returns its exit status, or None when it was killed."""
    process = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if kill_when is not None:
            began = time.perf_counter()
            while process.poll() is None and time.perf_counter() - began < 900:
                if kill_when():
                    raise subprocess.TimeoutExpired(cmd, 0)
                time.sleep(0.02)
        process.wait(timeout=kill_after if kill_after is not None else 900)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return None
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed ({process.returncode}): "
                           f"{process.stderr.read().decode()[-1500:]}")
    return process.returncode


def reference(kind: str, root: Path, data: Path) -> tuple[dict, float]:
    folder = root / f"{kind}-reference"
    began = time.perf_counter()
    if kind == "eval":
        for k in range(EVAL_SHARDS):
            run_once(commands(f"eval-shard{k}", folder, data)[0], None)
        return outcome(kind, folder), float(eval_progress(folder))  # the eval trials count blocks, not seconds
    start, _ = commands(kind, folder, data)
    points: set[int] = set()

    def watch() -> bool:  # records every progress point the uninterrupted run passes
        points.add(progress(kind, folder))
        return False

    run_once(start, None, watch)
    points.add(progress(kind, folder))
    reference_points[kind] = sorted(points)
    return outcome(kind, folder), time.perf_counter() - began


reference_points: dict[str, list[int]] = {}


def eval_trial(seed: int, root: Path, data: Path, expected: dict, blocks: int, max_kills: int) -> dict:
    """Each shard job killed (up to ``max_kills`` times in all) after a seeded number of further finished blocks,
    plus a seeded fraction of a block's time, and restarted until it finishes; then the merged result."""
    rng = random.Random(f"eval-{seed}")
    folder = root / f"eval-trial{seed}"
    kills: list[str] = []
    per_shard = blocks // EVAL_SHARDS
    kills_per_shard = -(-max_kills // EVAL_SHARDS)  # spread over the shards
    for k in range(EVAL_SHARDS):
        cmd, _ = commands(f"eval-shard{k}", folder, data)
        here = 0
        while True:
            done = eval_progress(folder)
            left = (k + 1) * per_shard - done
            if len(kills) < max_kills and here < kills_per_shard and left > 0:
                target = done + rng.randrange(left)
                delay = rng.uniform(0.0, 0.3)
                reached: list[float] = []

                def kill_when(target=target, delay=delay, reached=reached) -> bool:  # noqa: ANN001
                    if eval_progress(folder) >= target:
                        reached.append(time.perf_counter()) if not reached else None
                        return time.perf_counter() - reached[0] >= delay
                    return False

                if run_once(cmd, None, kill_when) is None:
                    kills.append(f"shard {k} after block {target} + {delay:.2f} s")
                    here += 1
                    continue
            else:
                run_once(cmd, None)
            break
    lines = [json.loads(x) for p in folder.glob("shard-*-of-*/blocks.jsonl") for x in p.read_text().splitlines()]
    once = len({(r["attack"], r["block"]) for r in lines}) == len(lines)
    same = equal(outcome("eval", folder), expected) and once
    shutil.rmtree(folder, ignore_errors=True)
    return {"kind": "eval", "seed": seed, "kills_at_s": kills, "equal": same, "no_block_twice": once}


def trial(kind: str, seed: int, root: Path, data: Path, expected: dict, duration: float,
          max_kills: int = 3) -> dict:
    """One seeded trial: up to ``max_kills`` kills at seeded progress points, then resumes until the run finishes."""
    if kind == "eval":
        return eval_trial(seed, root, data, expected, int(duration), max_kills)
    rng = random.Random(f"{kind}-{seed}")
    folder = root / f"{kind}-trial{seed}"
    start, resume = commands(kind, folder, data)
    points = reference_points[kind]  # the progress points of the uninterrupted run, the last one its end
    unit = duration / max(1, len(points))  # the time one point takes, on average
    kills, cmd = [], start
    while True:
        now = progress(kind, folder)
        ahead = [p for p in points[:-2] if p >= now]  # at least two points of work after the kill point
        if len(kills) < max_kills and ahead:
            target, delay = rng.choice(ahead), rng.uniform(0.0, 0.5 * unit)
            reached: list[float] = []

            def kill_when(target=target, delay=delay, reached=reached) -> bool:  # noqa: ANN001
                if progress(kind, folder) >= target:
                    reached.append(time.perf_counter()) if not reached else None
                    return time.perf_counter() - reached[0] >= delay
                return False

            if run_once(cmd, None, kill_when) is None:
                kills.append(f"point {target} + {delay:.2f} s")
                # a run killed before it wrote its config starts afresh; after that, it resumes
                cmd = resume if (folder / "config.yaml").is_file() or kind == "autoattack" else start
                continue
        else:
            run_once(cmd, None)
        break
    same = equal(outcome(kind, folder), expected)
    shutil.rmtree(folder, ignore_errors=True)
    return {"kind": kind, "seed": seed, "kills_at_s": kills, "equal": same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--kinds", default="train,search,autoattack,eval")
    parser.add_argument("--json")
    parser.add_argument("--autoattack-worker", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.autoattack_worker:
        autoattack_worker(Path(args.autoattack_worker))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_data(root)
        for kind in args.kinds.split(","):
            expected, duration = reference(kind, root, data)
            for seed in range(args.trials):
                row = trial(kind, seed, root, data, expected, duration)
                rows.append(row)
                print(f"{kind} trial {seed}: killed {row['kills_at_s']}, {'equal' if row['equal'] else 'DIFFERENT'}",
                      flush=True)
    summary = {k: {"trials": sum(r["kind"] == k for r in rows), "kills": sum(len(r["kills_at_s"]) for r in rows
                                                                            if r["kind"] == k),
                   "equal": sum(r["equal"] for r in rows if r["kind"] == k)} for k in args.kinds.split(",")}
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "trials": rows}, indent=2) + "\n")
    return 0 if all(r["equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
