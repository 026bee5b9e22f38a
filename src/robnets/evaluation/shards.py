"""Evaluation in blocks and shards: one rule, so that a point's result never depends on how the work was split.

The evaluated points are cut into fixed **blocks** of ``block_size`` consecutive points (``eval.block_size``).
Every attack restarts its random stream at its seed at the start of each block (the rule the reference
AutoAttack applies to its chunks), and AutoAttack runs its cascade within each block, exactly as the reference
runs it on those points. A **shard** is a contiguous range of blocks; a run of N shards (torchrun or slurm
ranks, or ``--shard K/N`` jobs) therefore gives every point the result a single process gives it.

A shard folder holds ``shard.json`` (what it evaluates: weights, points, attacks, threat model, seed, versions,
the command that computes it) and ``blocks.jsonl`` (one line per finished attack and block, per-point
correctness as packed bits), appended as results come: a killed shard restarted with the same command
recomputes only the blocks that are missing (AutoAttack also keeps its chunk-level state for the block under
way). :func:`merge` combines shard folders into one result after checking that they measure the same thing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..attacks import PGD, Attack, AutoAttack
from ..data.arrays import ImageArrayDataset
from ..errors import RobnetsError
from ..io import append_jsonl, pack_bits, read_jsonl, unpack_bits, write_json_atomic
from ..runtime import autocast_context, eval_mode, progress_bar
from .runner import AttackResult, evaluate

SHARD_FILE = "shard.json"
BLOCK_FILE = "blocks.jsonl"
FORMAT = "robnets-eval-shard/1"
# what two shards must share to be parts of one evaluation
IDENTITY = ("model", "weights_sha256", "points", "block_size", "attacks", "autoattack", "eps_sweep", "threat_model",
            "eps", "seed", "precision", "versions")


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (0 <= K < N) -> (K, N); one error line otherwise."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise RobnetsError(f"--shard {text!r}: expected K/N, e.g. --shard 0/4 for the first of four shards "
                           f"(K counts from 0)") from None
    if not (n >= 1 and 0 <= k < n):
        raise RobnetsError(f"--shard {text}: K must lie in 0..N-1 (shards count from 0), e.g. 0/{max(n, 1)}")
    return k, n


def shard_folder_name(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}"


@dataclass(frozen=True)
class Plan:
    """Which points each attack covers (the first ``counts[name]``), cut into blocks, and this shard's blocks."""

    counts: dict[str, int]
    block_size: int
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise RobnetsError(f"eval.block_size must be at least 1, got {self.block_size}")
        if self.count > self.blocks_total:
            raise RobnetsError(f"{self.count} shards for {self.total} points in blocks of {self.block_size}: at "
                               f"most {self.blocks_total} shards (one block each); use fewer shards or a smaller "
                               f"eval.block_size")

    @property
    def total(self) -> int:
        return max(self.counts.values())

    @property
    def blocks_total(self) -> int:
        return -(-self.total // self.block_size)

    @property
    def blocks(self) -> range:
        """This shard's blocks: a contiguous range, the shards' sizes differing by at most one block."""
        per, extra = divmod(self.blocks_total, self.count)
        start = self.index * per + min(self.index, extra)
        return range(start, start + per + (1 if self.index < extra else 0))

    def block_span(self, block: int, attack: str) -> tuple[int, int]:
        """(start, stop) of ``block`` within the points ``attack`` covers (empty past its count)."""
        start = block * self.block_size
        return start, max(start, min(start + self.block_size, self.counts[attack]))


def points_digest(dataset: Dataset, total: int) -> str:
    """sha256 of the first ``total`` points (images and labels) of an in-memory dataset; for other datasets a
    digest of their length and class (what can be checked cheaply)."""
    digest = hashlib.sha256()
    if isinstance(dataset, ImageArrayDataset):
        digest.update(dataset.images[:total].contiguous().numpy().tobytes())
        digest.update(dataset.labels[:total].to(torch.int64).contiguous().numpy().tobytes())
    else:
        digest.update(f"{type(dataset).__name__}:{len(dataset)}:{getattr(dataset, 'root', '')}".encode())
    return digest.hexdigest()


def _points(dataset: Dataset, start: int, stop: int) -> Dataset:
    if isinstance(dataset, ImageArrayDataset):
        return dataset.select(np.arange(start, stop))
    return torch.utils.data.Subset(dataset, range(start, stop))


def _restart(attack: Attack | None) -> None:
    """Restart an attack's random stream at its seed (a transfer attack: its source's)."""
    inner = getattr(attack, "source_attack", attack)
    if inner is not None and getattr(inner, "seed", None) is not None:
        inner.set_seed(inner.seed)


class ShardStore:
    """A shard folder: its ``shard.json`` and the block results appended to ``blocks.jsonl``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def blocks_path(self) -> Path:
        return self.folder / BLOCK_FILE

    def describe(self) -> dict[str, Any] | None:
        path = self.folder / SHARD_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise RobnetsError(f"{path} is damaged (not JSON); delete the shard folder {self.folder} and compute "
                               f"it again") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RobnetsError(f"{path} is not a robnets evaluation shard")
        return data

    def open(self, identity: dict[str, Any]) -> None:
        """Create the folder for this evaluation, or check that an existing one holds the same evaluation."""
        saved = self.describe()
        if saved is not None:
            differ = [k for k in IDENTITY if json.loads(json.dumps(identity.get(k))) != saved.get(k)]
            differ += [k for k in ("shard", "blocks") if json.loads(json.dumps(identity[k])) != saved.get(k)]
            if differ:
                raise RobnetsError(f"{self.folder} holds an evaluation with other {', '.join(differ)}; resuming "
                                   f"would mix them: use another --output-dir, or delete that folder")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / SHARD_FILE, {**identity, "complete": False})

    def records(self) -> list[dict]:
        return read_jsonl([self.blocks_path])

    def done(self) -> set[tuple[str, int]]:
        return {(r["attack"], r["block"]) for r in self.records()}

    def add(self, record: dict) -> None:
        append_jsonl(self.blocks_path, record)

    def finish(self, extra: dict[str, Any]) -> None:
        data = self.describe() or {}
        write_json_atomic(self.folder / SHARD_FILE, {**data, **extra, "complete": True})


# ---------------------------------------------------------------------------------------------- computing
def run_table(engine: nn.Module, dataset: Dataset, attacks: dict[str, Attack | None], plan: Plan, store: ShardStore,
              *, device: torch.device, batch_size: int, precision: str, num_workers: int = 0,
              progress: bool = True, log: Callable[[str], None] = lambda _: None) -> None:
    """Every attack of the table on this shard's blocks not yet done, block by block."""
    done = store.done()
    for name, attack in attacks.items():
        todo = [b for b in plan.blocks if (name, b) not in done and plan.block_span(b, name)[1] > plan.block_span(b, name)[0]]
        if not todo:
            continue
        points = sum(plan.block_span(b, name)[1] - plan.block_span(b, name)[0] for b in todo)
        bar = progress_bar(total=points, desc=f"{name:>10}", unit="img", enabled=progress, leave=True,
                           dynamic_ncols=True)
        with bar:
            for b in todo:
                start, stop = plan.block_span(b, name)
                _restart(attack)
                result, = evaluate(engine, _points(dataset, start, stop), {name: attack}, device=device,
                                   batch_size=batch_size, precision=precision, num_workers=num_workers,
                                   progress=False, record_examples=True)
                store.add({"attack": name, "block": b, "start": start, "stop": stop, "correct": result.correct,
                           "bits": pack_bits(result.correct_mask), "seconds": round(result.seconds, 4)})
                bar.update(stop - start)
                bar.set_postfix(acc=f"{100.0 * result.correct / max(stop - start, 1):.2f}%")
        log(f"==> {name}: blocks {todo[0]}-{todo[-1]} done")


class _CascadeBars:
    """Progress of AutoAttack on a terminal: a bar per attack of the block under way (points attacked, robust so
    far, time left); elsewhere the log lines say the same per chunk and per attack."""

    def __init__(self, enabled: bool, block: int, blocks: int) -> None:
        self.enabled, self.label, self.bar, self.attack = enabled, f"block {block + 1}/{blocks}", None, None

    def __call__(self, attack: str, done: int, total: int, robust: int, n: int) -> None:
        if attack != self.attack:
            self.close()
            self.attack = attack
            self.bar = progress_bar(total=total, initial=done, desc=f"{attack:>8} ({self.label})", unit="pt",
                                    enabled=self.enabled, leave=False, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(robust=f"{100.0 * robust / max(n, 1):.1f}%")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_autoattack(engine: nn.Module, dataset: Dataset, plan: Plan, store: ShardStore, *, norm: str, eps: float,
                   version: str, seed: int, precision: str, batch_size: int,
                   log: Callable[[str], None] = lambda _: None, progress: bool = True) -> None:
    """The reference AutoAttack's cascade on each of this shard's blocks not yet done (chunk-level state for the
    block under way in ``aa_block<B>.safetensors``)."""
    from .suites import collect

    done = store.done()
    for b in plan.blocks:
        start, stop = plan.block_span(b, "autoattack")
        if ("autoattack", b) in done or stop <= start:
            continue
        x, y = collect(_points(dataset, start, stop), stop - start, batch_size)
        bars = _CascadeBars(progress, b, plan.blocks_total)
        aa = AutoAttack(engine, norm=norm, eps=eps, version=version, seed=seed, precision=precision,
                        log=lambda line, b=b: log(f"==> autoattack block {b}: {line}"), progress=bars)
        state = store.folder / f"aa_block{b}.safetensors"
        try:
            aa.run_standard_evaluation(x, y, bs=batch_size, state_path=state)
        finally:
            bars.close()
        n = stop - start
        store.add({"attack": "autoattack", "block": b, "start": start, "stop": stop,
                   "clean": pack_bits(aa.clean_flags), "bits": pack_bits(aa.robust_flags),
                   "correct": int(aa.robust_flags.sum()),
                   "stages": [{"attack": a, "robust": round(acc * n), "seconds": aa.seconds.get(a, 0.0)}
                              for a, acc in aa.robust_accuracy_history],
                   "engine": aa.describe()["engine"]})
        state.unlink(missing_ok=True)


def run_sweep(engine: nn.Module, dataset: Dataset, plan: Plan, store: ShardStore, *, eps_values: list[float],
              steps: int, batch_size: int, device: torch.device, precision: str, seed: int,
              log: Callable[[str], None] = lambda _: None) -> None:
    """PGD-``steps`` (step ε/4) at every ε of the sweep on this shard's blocks not yet done."""
    from .suites import collect

    done = store.done()
    with eval_mode(engine):
        for eps in eps_values:
            name = sweep_name(eps)
            attack = PGD(engine, eps=eps, alpha=max(eps / 4, 1e-8), steps=steps if eps > 0 else 0, seed=seed,
                         precision=precision)
            for b in plan.blocks:
                start, stop = plan.block_span(b, name)
                if (name, b) in done or stop <= start:
                    continue
                attack.set_seed(seed)
                began = time.perf_counter()
                x_all, y_all = collect(_points(dataset, start, stop), stop - start, batch_size)
                hits = []
                for i in range(0, len(y_all), batch_size):
                    x, y = x_all[i:i + batch_size].to(device), y_all[i:i + batch_size].to(device)
                    x_adv = attack(x, y) if eps > 0 else x
                    with torch.no_grad(), autocast_context(device, precision):
                        hits.append((engine(x_adv).argmax(1) == y).cpu())
                mask = torch.cat(hits)
                store.add({"attack": name, "block": b, "start": start, "stop": stop, "correct": int(mask.sum()),
                           "bits": pack_bits(mask), "seconds": round(time.perf_counter() - began, 4)})
            log(f"==> eps-sweep: eps {eps * 255:.2f}/255 done on this shard")


def sweep_name(eps: float) -> str:
    return f"sweep:{eps * 255:.6g}/255"


# ---------------------------------------------------------------------------------------------- merging
@dataclass
class Merged:
    results: list[AttackResult]
    shards: list[dict[str, Any]]
    missing: list[int]  # shard indices not present or not complete
    commands: dict[int, str]
    sweep: list[dict[str, Any]] | None
    per_example: dict[str, str]  # attack -> packed per-point correctness over the points present
    identity: dict[str, Any]

    @property
    def partial(self) -> bool:
        return bool(self.missing)


def shard_folders(paths: list[str | Path]) -> list[Path]:
    """The shard folders among ``paths``: each path is a shard folder or a run folder holding shard-* folders."""
    out: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise RobnetsError(f"{path} is not a folder; give evaluation shard folders, or the run folder that "
                               f"holds them")
        if (path / SHARD_FILE).is_file():
            out.append(path)
            continue
        found = sorted(p for p in path.glob("shard-*-of-*") if (p / SHARD_FILE).is_file())
        if not found:
            raise RobnetsError(f"{path} holds no evaluation shard (no {SHARD_FILE}, no shard-K-of-N folders); "
                               f"compute the shards first (robnets eval ... --shard K/N --output-dir {path})")
        out.extend(found)
    return out


def merge(folders: list[Path]) -> Merged:
    """Combine shard folders into one result; refuses (one line) shards that measure different things."""
    descriptions = [(f, ShardStore(f).describe()) for f in folders]
    first_folder, first = descriptions[0]
    for folder, d in descriptions[1:]:
        differ = [k for k in IDENTITY if d.get(k) != first.get(k)]
        if d["shard"][1] != first["shard"][1]:
            differ.append("shard count")
        if differ:
            raise RobnetsError(f"{folder} and {first_folder} are not shards of one evaluation: they differ in "
                               f"{', '.join(differ)}; merge only shards computed with the same command")
    count = first["shard"][1]
    by_index: dict[int, tuple[Path, dict]] = {}
    for folder, d in descriptions:
        k = d["shard"][0]
        if k in by_index and by_index[k][0].resolve() != folder.resolve():
            raise RobnetsError(f"shard {k} of {count} is given twice ({by_index[k][0]} and {folder}); give each "
                               f"shard once")
        by_index[k] = (folder, d)
    commands = {k: first["command"].replace("{K}", str(k)).replace("{N}", str(count)) for k in range(count)}
    missing = [k for k in range(count) if k not in by_index or not by_index[k][1].get("complete")]
    records: dict[tuple[str, int], dict] = {}
    for k, (folder, _) in sorted(by_index.items()):
        for r in ShardStore(folder).records():
            records[(r["attack"], r["block"])] = r
    results, per_example = [], {}
    for name, settings in first["attacks"].items():
        rows = sorted((r for (a, _), r in records.items() if a == name), key=lambda r: r["block"])
        if not rows:
            continue
        masks = [unpack_bits(r["bits"], r["stop"] - r["start"]) for r in rows]
        mask = np.concatenate(masks)
        results.append(AttackResult(name, int(mask.sum()), len(mask), max(sum(r["seconds"] for r in rows), 1e-9),
                                    settings, torch.from_numpy(mask)))
        per_example[name] = pack_bits(mask)
    aa_rows = sorted((r for (a, _), r in records.items() if a == "autoattack"), key=lambda r: r["block"])
    if aa_rows and first.get("autoattack"):
        settings = first["autoattack"]
        n = sum(r["stop"] - r["start"] for r in aa_rows)
        stages: dict[str, list[float]] = {}
        for r in aa_rows:
            for s in r["stages"]:
                stages.setdefault(s["attack"], [0, 0.0])
                stages[s["attack"]][0] += s["robust"]
                stages[s["attack"]][1] += s["seconds"]
        for name, (robust, seconds) in stages.items():
            results.append(AttackResult(f"aa:{name}", int(robust), n, max(seconds, 1e-9),
                                        {**settings, "cumulative": True}))
        mask = np.concatenate([unpack_bits(r["bits"], r["stop"] - r["start"]) for r in aa_rows])
        results.append(AttackResult("autoattack", int(mask.sum()), n, max(sum(v[1] for v in stages.values()), 1e-9),
                                    {**settings, "attacks": list(stages)}, torch.from_numpy(mask)))
        per_example["autoattack"] = pack_bits(mask)
    sweep = None
    if first.get("eps_sweep"):
        sweep = []
        for eps in first["eps_sweep"]["eps"]:
            rows = [r for (a, _), r in records.items() if a == sweep_name(eps)]
            n = sum(r["stop"] - r["start"] for r in rows)
            correct = sum(r["correct"] for r in rows)
            sweep.append({"eps": eps, "eps_255": eps * 255, "accuracy": 100.0 * correct / n if n else float("nan"),
                          "correct": correct, "n": n})
    shards = [{"shard": k, "folder": str(folder), "blocks": d["blocks"], "complete": bool(d.get("complete")),
               "host": d.get("host"), "device": d.get("device"), "torch": d.get("versions_local", {}).get("torch"),
               "seconds": d.get("seconds")} for k, (folder, d) in sorted(by_index.items())]
    return Merged(results, shards, missing, commands, sweep, per_example, first)
