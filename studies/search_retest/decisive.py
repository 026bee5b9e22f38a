"""The registered experiment of the search re-test: does the search find a cell that beats RobNet-large's cell
at an equal parameter count and with the same training? (Design and decision rules: docs/search-retest.md,
section "The decisive experiment".)

    python studies/search_retest/decisive.py pick [SEARCH_FOLDER]   # arms.json and points.json, from the search
    python studies/search_retest/decisive.py run --data-dir D      # train and evaluate every job not yet done
    python studies/search_retest/decisive.py status                # what is done, what is left

A job is one (arm, seed): train from scratch with finalist.yaml at the arm's width, evaluate clean on all
10,000 test images and PGD-20 on the 2,000 registered test points, and for the search's top cell and
RobNet-large's cell the reference AutoAttack's APGD-CE and APGD-T (its standard cascade stopped after APGD-T)
on the first 500 of those points. Per-image correctness is saved as packed bits. Every phase resumes where it
stopped (the training state, the AutoAttack state) and nothing done is recomputed; once a job is complete its
weights and resume states are deleted (their sha256 stays in the results); while a job is under way its one
resume state (replaced, never accumulated) is committed with it, so a job resumes on another machine.
Several workers may run at once: each takes the first job no other worker holds.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from robnets.errors import RobnetsError
from robnets.io import pack_bits, sha256_file, write_json_atomic

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FOLDER = HERE / "decisive"
RUNS = FOLDER / "runs"
ARMS = FOLDER / "arms.json"
POINTS = FOLDER / "points.json"
RECIPE = HERE / "finalist.yaml"

ROBNET_LARGE = "1111-111111-01110110-1101010111"
LAYERS, REFERENCE_C = 5, 16
TOLERANCE = 0.03  # every arm's parameter count within +-3 % of RobNet-large's at C=16
SEEDS_MAIN, SEEDS_OTHER = 6, 3  # the search's top cell and RobNet-large's: 6 seeds; every other arm: 3
POINTS_SEED, PGD_POINTS, APGD_POINTS = 31, 2000, 500
EPS, STEP = 8 / 255, 2 / 255
EVAL_BLOCK = 1000  # points per evaluation block (robnets eval's default eval.block_size)
APGD_CHUNK = 50  # AutoAttack's batch size: its state is saved after every chunk, so a stop loses at most one


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the arms
def parameters(genotype: str, C: int) -> int:
    from robnets.models import RobNet

    with torch.device("meta"):
        return sum(p.numel() for p in RobNet(genotype, C=C, layers=LAYERS).parameters())


def width(genotype: str, target: int) -> tuple[int, int]:
    """The integer C whose parameter count is nearest to ``target``, and that count."""
    best = min(range(4, 129), key=lambda C: abs(parameters(genotype, C) - target))
    return best, parameters(genotype, best)


def flops(genotype: str, C: int) -> int:
    from robnets.models import RobNet
    from robnets.models.flops import flops_per_image

    return flops_per_image(RobNet(genotype, C=C, layers=LAYERS))


def pick(search_folder: Path) -> None:
    """arms.json: RobNet-large's cell, the search's top three, the two at the median and the bottom three, each
    at the C that brings its parameter count nearest to RobNet-large's at C=16; a cell that no C brings within
    +-3 % is passed over for the next one in the same direction (matchability depends on structure only)."""
    from robnets.models.genotype import Genotype
    from robnets.search import rank

    rows = [r for r in json.loads((search_folder / "architectures.json").read_text()) if r.get("status") == "scored"]
    if not rows:
        raise RobnetsError(f"{search_folder} holds no scored architectures; finish the search first")
    if not all(Genotype.parse(r["genotype"]).is_fully_live() for r in rows):
        raise RobnetsError(f"{search_folder} scored cells that are not fully live; the arms are drawn from a "
                           f"search with search.live_only")
    ranked = rank(rows)
    target = parameters(ROBNET_LARGE, REFERENCE_C)
    passed: list[dict] = []

    def matched(position: int) -> dict | None:
        r = ranked[position]
        C, count = width(r["genotype"], target)
        entry = {"genotype": r["genotype"], "search_rank": position + 1, "search_adv": r["adv"],
                 "search_clean": r["clean"], "density": r["density"], "convs_per_cell": r["convs_per_cell"],
                 "C": C, "params": count, "params_vs_reference": count / target - 1}
        if abs(count / target - 1) > TOLERANCE:
            passed.append(entry)
            return None
        return entry

    def take(order: list[int], k: int, used: set[int]) -> list[dict]:
        out = []
        for position in order:
            if len(out) == k:
                break
            if position in used:
                continue
            entry = matched(position)
            if entry is not None:
                out.append(entry)
                used.add(position)
        if len(out) < k:
            raise RobnetsError("too few width-matchable cells in the search for the registered arms")
        return out

    n, used = len(ranked), set()
    top = take(list(range(n)), 3, used)
    bottom = take(list(range(n - 1, -1, -1)), 3, used)
    middle_order = sorted(range(n), key=lambda p: (abs(p - (n - 1) / 2), p))
    middle = take(middle_order, 2, used)
    reference = {"genotype": ROBNET_LARGE, "search_rank": None, "search_adv": None, "search_clean": None,
                 "density": Genotype.parse(ROBNET_LARGE).density(), "convs_per_cell": 13, "C": REFERENCE_C,
                 "params": target, "params_vs_reference": 0.0}
    arms = []
    for name, entry, seeds in [("robnet_large", reference, SEEDS_MAIN), ("top1", top[0], SEEDS_MAIN),
                               ("top2", top[1], SEEDS_OTHER), ("top3", top[2], SEEDS_OTHER),
                               ("middle1", middle[0], SEEDS_OTHER), ("middle2", middle[1], SEEDS_OTHER),
                               ("bottom1", bottom[0], SEEDS_OTHER), ("bottom2", bottom[1], SEEDS_OTHER),
                               ("bottom3", bottom[2], SEEDS_OTHER)]:
        arms.append({"name": name, **entry, "flops": flops(entry["genotype"], entry["C"]), "seeds": seeds})
    FOLDER.mkdir(parents=True, exist_ok=True)
    source = search_folder.relative_to(ROOT) if search_folder.is_relative_to(ROOT) else search_folder
    write_json_atomic(ARMS, {"search": str(source), "reference_params": target,
                             "tolerance": TOLERANCE, "arms": arms, "passed_over": passed})
    permutation = np.random.default_rng(POINTS_SEED).permutation(10_000)
    write_json_atomic(POINTS, {"seed": POINTS_SEED, "rule": "numpy default_rng(seed).permutation(10000)",
                               "pgd20": permutation[:PGD_POINTS].tolist(), "apgd": permutation[:APGD_POINTS].tolist()})
    for a in arms:
        print(f"{a['name']:>12}  rank {a['search_rank'] or '-':>3}  C={a['C']:>3}  {a['params']:>8,} params "
              f"({a['params_vs_reference']:+.1%})  {a['flops'] / 1e6:7.1f} MFLOPs  {a['genotype']}")
    for p in passed:
        print(f"passed over (no C within 3 %): rank {p['search_rank']} {p['genotype']} (nearest C={p['C']}, "
              f"{p['params_vs_reference']:+.1%})")


# ---------------------------------------------------------------------------------------------- the jobs
def jobs() -> list[tuple[dict, int]]:
    """(arm, seed) in the order they run: seed by seed over the arms, so every arm advances together."""
    arms = json.loads(ARMS.read_text())["arms"]
    return [(a, s) for s in range(SEEDS_MAIN) for a in arms if s < a["seeds"]]


def needs_apgd(arm: dict) -> bool:
    return arm["name"] in ("robnet_large", "top1")


def job_done(arm: dict, seed: int) -> bool:
    folder = RUNS / f"{arm['name']}-seed{seed}"
    return (folder / "eval.json").is_file() and (not needs_apgd(arm) or (folder / "apgd.json").is_file())


@contextlib.contextmanager
def claim(name: str):  # noqa: ANN201
    """An exclusive, non-blocking claim on a job among workers; yields False when another worker holds it."""
    locks = FOLDER / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def train(arm: dict, seed: int, folder: Path, data_dir: str) -> bool:
    from robnets.training.driver import run_training

    if (folder / "final.safetensors").is_file():
        return True
    if (folder / "config.yaml").is_file():
        result = run_training(None, output_dir=None, data_dir=data_dir, resume=folder, progress=False)
    else:
        overrides = ["model.name=robnet", f"model.genotype={arm['genotype']}", f"model.C={arm['C']}", f"seed={seed}"]
        result = run_training(RECIPE, overrides, output_dir=folder, data_dir=data_dir, progress=False)
    return result.completed


def test_set(data_dir: str):  # noqa: ANN201
    from robnets.data import load_dataset

    return load_dataset("cifar10", "test", data_dir)


def evaluate_job(arm: dict, seed: int, folder: Path, data_dir: str, stop=None) -> bool:  # noqa: ANN001
    """Clean accuracy on all 10,000 test images and PGD-20 on the registered 2,000, per image, in blocks of
    1,000 points (each attack's random stream restarted at its seed at every block, as ``robnets eval`` does);
    every finished block is kept in ``eval.partial.json``, so a stopped evaluation resumes at its next block.
    False when ``stop.raised`` ended it between blocks."""
    from robnets.acceleration import accelerate
    from robnets.attacks import PGD
    from robnets.evaluation import evaluate
    from robnets.io import unpack_bits
    from robnets.models.loading import load_model

    weights = folder / "final.safetensors"
    model = load_model(weights).eval()
    if parameters(arm["genotype"], arm["C"]) != sum(p.numel() for p in model.parameters()):
        raise RobnetsError(f"{weights} is not the network of arm {arm['name']}")
    sha = sha256_file(weights)
    engine = accelerate(model, torch.device("cpu"))[0]
    test = test_set(data_dir)
    points = json.loads(POINTS.read_text())["pgd20"]
    partial_file = folder / "eval.partial.json"
    partial = json.loads(partial_file.read_text()) if partial_file.is_file() else {}
    if partial.get("weights_sha256") != sha:
        partial = {"weights_sha256": sha, "blocks": {}}
    work = [("clean", b, list(range(b, min(b + EVAL_BLOCK, len(test))))) for b in range(0, len(test), EVAL_BLOCK)]
    work += [("pgd20", b, points[b:b + EVAL_BLOCK]) for b in range(0, len(points), EVAL_BLOCK)]
    for kind, b, indices in work:
        key = f"{kind}:{b}"
        if key in partial["blocks"]:
            continue
        if stop is not None and stop.raised:
            return False
        attack = None if kind == "clean" else PGD(engine, eps=EPS, alpha=STEP, steps=20, seed=0)
        res, = evaluate(engine, test.select(indices), {kind: attack}, batch_size=200, progress=False,
                        record_examples=True)
        partial["blocks"][key] = {"n": res.n, "bits": pack_bits(res.correct_mask), "seconds": res.seconds,
                                  "settings": res.settings}
        write_json_atomic(partial_file, partial)

    def merged(kind: str, n: int) -> dict:
        blocks = sorted((int(k.split(":")[1]), v) for k, v in partial["blocks"].items() if k.startswith(kind + ":"))
        bits = np.concatenate([unpack_bits(v["bits"], v["n"]) for _, v in blocks])
        if len(bits) != n:
            raise RobnetsError(f"{partial_file}: {kind} covers {len(bits)} points, not {n}")
        return {"n": n, "correct": int(bits.sum()), "accuracy": 100 * float(bits.mean()), "bits": pack_bits(bits),
                "seconds": round(sum(v["seconds"] for _, v in blocks), 1), "settings": blocks[0][1]["settings"],
                "block_size": EVAL_BLOCK}

    clean, pgd = merged("clean", len(test)), merged("pgd20", len(points))
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result = {
        "arm": arm["name"], "seed": seed, "genotype": arm["genotype"], "C": arm["C"], "params": arm["params"],
        "weights_sha256": sha, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "train_seconds": round(sum(m.get("seconds", 0.0) for m in metrics), 1),
        "train_epochs": metrics,
        "clean": {**clean, "points": "all 10,000 (in order)"},
        "pgd20": {**pgd, "points": "points.json: pgd20"},
        "eval_seconds": round(clean["seconds"] + pgd["seconds"], 1),
    }
    write_json_atomic(folder / "eval.json", result)
    partial_file.unlink(missing_ok=True)
    log(f"{folder.name}: clean {clean['accuracy']:.2f} % (n={clean['n']}), PGD-20 {pgd['accuracy']:.2f} % "
        f"(n={pgd['n']})")
    return True


def apgd_job(arm: dict, seed: int, folder: Path, data_dir: str) -> bool:
    """The reference AutoAttack (standard, Linf 8/255) up to APGD-T on the first 500 registered points, in chunks
    of 50 (the reference's ``bs``; each chunk seeded as the reference seeds it), each chunk's result saved."""
    from robnets.attacks import AutoAttack
    from robnets.models.loading import load_model

    weights = folder / "final.safetensors"
    model = load_model(weights).eval()
    points = json.loads(POINTS.read_text())["apgd"]
    x, y = test_set(data_dir).select(points).batch(0, len(points))
    aa = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0, log=lambda line: log(f"  {line}"))
    state = folder / "apgd.state.safetensors"
    x_adv = aa.run_standard_evaluation(x, y, bs=APGD_CHUNK, state_path=state, until="apgd-t")
    linf = (x_adv - x).abs().flatten(1).amax(1).max().item()
    result = {
        "arm": arm["name"], "seed": seed, "weights_sha256": sha256_file(weights), **aa.describe(),
        "stopped_after": "apgd-t", "points": "points.json: apgd", "n": len(points),
        "clean_accuracy": 100 * aa.clean_accuracy, "robust_accuracy": 100 * aa.robust_accuracy,
        "per_attack": [{"attack": a, "robust_accuracy": 100 * acc, "seconds": aa.seconds[a]}
                       for a, acc in aa.robust_accuracy_history],
        "clean_bits": pack_bits(aa.clean_flags), "robust_bits": pack_bits(aa.robust_flags),
        "checks": {"max_linf": linf, "within_eps": linf <= EPS + 1e-5,
                   "in_unit_box": bool(x_adv.min() >= 0 and x_adv.max() <= 1)},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    write_json_atomic(folder / "apgd.json", result)
    state.unlink(missing_ok=True)
    log(f"{folder.name}: APGD-CE + APGD-T {result['robust_accuracy']:.2f} % (n={len(points)}), "
        f"clean {result['clean_accuracy']:.2f} %")
    return True


def tidy(folder: Path) -> None:
    """A complete job keeps its results, config and logs; weights and resume states go."""
    for name in ("final.safetensors", "best.safetensors", "state.pt", "apgd.state.safetensors"):
        (folder / name).unlink(missing_ok=True)


def run(data_dir: str, max_jobs: int | None) -> int:
    from robnets.training.trainer import _StopFlag

    if not ARMS.is_file() or not POINTS.is_file():
        raise RobnetsError(f"{ARMS} and {POINTS} are missing: run 'decisive.py pick' first")
    # run folders and the data named relative to the repository, so the committed logs and configs hold no
    # path of the machine that ran them
    data_dir = os.path.relpath(os.path.abspath(data_dir), ROOT)
    os.chdir(ROOT)
    done_here = 0
    for arm, seed in jobs():
        if max_jobs is not None and done_here >= max_jobs:
            break
        name = f"{arm['name']}-seed{seed}"
        if job_done(arm, seed):
            tidy(RUNS / name)
            continue
        with claim(name) as mine:
            if not mine:
                continue
            folder = (RUNS / name).relative_to(ROOT)
            log(f"{name}: C={arm['C']}, {arm['params']:,} parameters, {arm['genotype']}")
            if not train(arm, seed, folder, data_dir):
                log(f"{name}: training stopped; run again to resume")
                return 1
            with _StopFlag() as stop:
                if not (folder / "eval.json").is_file() and not evaluate_job(arm, seed, folder, data_dir, stop):
                    log(f"{name}: evaluation stopped; run again to resume at its next block")
                    return 1
                if stop.raised:
                    return 1
            if needs_apgd(arm) and not (folder / "apgd.json").is_file():
                apgd_job(arm, seed, folder, data_dir)
            tidy(folder)
            done_here += 1
    left = [f"{a['name']}-seed{s}" for a, s in jobs() if not job_done(a, s)]
    log(f"{done_here} job(s) done by this worker; {len(left)} left" + (f": {', '.join(left)}" if left else ""))
    return 0


def status() -> None:
    if not ARMS.is_file():
        print("no arms yet: run 'decisive.py pick'")
        return
    for arm, seed in jobs():
        folder = RUNS / f"{arm['name']}-seed{seed}"
        parts = []
        for file, label in (("eval.json", "eval"), ("apgd.json", "apgd")):
            if (folder / file).is_file():
                r = json.loads((folder / file).read_text())
                parts.append(f"{label}: " + (f"clean {r['clean']['accuracy']:.2f} PGD-20 {r['pgd20']['accuracy']:.2f}"
                                             if label == "eval" else f"{r['robust_accuracy']:.2f}"))
        if job_done(arm, seed):
            state = "done"
        elif (folder / "eval.json").is_file():
            state = "apgd"
        elif (folder / "final.safetensors").is_file():
            state = "eval"
        else:
            state = "training" if (folder / "config.yaml").is_file() else "waiting"
        print(f"{folder.name:>20}  {state:>8}  {'; '.join(parts)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pick")
    p.add_argument("search", nargs="?", default=str(HERE / "runs" / "cell_live"))
    r = sub.add_parser("run")
    r.add_argument("--data-dir", default=os.path.join(os.environ.get("ROBNETS_DATA", "data"), "cifar10"))
    r.add_argument("--max-jobs", type=int, default=None)
    sub.add_parser("status")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "pick":
        pick(Path(args.search).resolve())
        return 0
    if args.command == "run":
        return run(args.data_dir, args.max_jobs)
    status()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RobnetsError as exc:
        print(f"decisive: error: {exc}", file=sys.stderr)
        sys.exit(2)
