"""From a resolved config to result files: build the model, load weights, load data, attack, report."""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import create_attack
from ..config import Config, build_model, save_config
from ..data import DATASETS, load_dataset, resolve_data_root
from ..errors import RobnetsError
from ..distributed import DistContext
from ..io import sha256_file, write_json_atomic, write_text_atomic
from ..acceleration import accelerate, pgd_loop_for
from ..models import RobNet
from ..models.checkpoint import check_state_dict_matches, load_weights, read_checkpoint
from .report import model_card, results_table, write_results
from ..runtime import resolve_device
from .runner import AttackResult
from .shards import (FORMAT, SHARD_FILE, Merged, Plan, ShardStore, merge, points_digest, run_autoattack, run_sweep,
                     run_table, shard_folder_name, shard_folders, sweep_name)
from .suites import write_sweep


_LOG = logging.getLogger("robnets.evaluation").info


@dataclass
class EvaluationRun:
    results: list[AttackResult]
    folder: Path
    files: dict[str, Path]
    meta: dict[str, Any]

    def table(self) -> str:
        return results_table(self.results)


def model_overrides_from_checkpoint(path: str | Path) -> list[str]:
    """``model.*`` overrides rebuilding the architecture a checkpoint holds: from a project safetensors file's
    metadata (model name and constructor arguments), else read from an original checkpoint's keys and shapes
    (width, depth, classes, stem, and which RobNet) where they fit one preset; empty when they do not."""
    import json

    from ..models.loading import infer_robnet

    if not Path(path).is_file():
        return []
    loaded = read_checkpoint(path)
    meta = loaded.metadata
    if not meta.get("model"):
        fit = infer_robnet(loaded.state_dict)
        if fit is None:
            return []
        name, kwargs = fit
        return [f"model.name={name}"] + [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}"
                                         for k, v in kwargs.items()]
    from ..models.loading import model_from_metadata

    with torch.device("meta"):  # the file's tensors must fit what its metadata describes, before any allocation
        described = model_from_metadata(meta, f"checkpoint {path}")
    check_state_dict_matches(described, loaded.state_dict, f"checkpoint {path} (its tensors against its own "
                             f"metadata)", meta.get("model", ""))
    out = [f"model.name={meta['model']}"]
    if meta["model"] == "robnet" and meta.get("architecture"):
        out.append(f"model.genotype={meta['architecture']}")
    for key, value in json.loads(meta.get("model_args") or "{}").items():
        if value is not None and key not in ("mean", "std", "genotype"):
            out.append(f"model.{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def load_checkpoint_into(model: nn.Module, path: str | Path, model_name: str) -> str:
    """Load weights strictly; return a provenance string (path and sha256)."""
    loaded = read_checkpoint(path)
    arch = loaded.metadata.get("architecture")
    genotype = getattr(model, "genotype", None)
    if arch and genotype is not None and arch != str(genotype):
        raise RobnetsError(f"checkpoint {path} holds architecture {arch[:40]}..., not the configured "
                           f"{model_name}; fix model.name/genotype or the checkpoint")
    try:
        load_weights(model, loaded, model_name=model_name, source=f"checkpoint {path}")
    except RobnetsError as exc:  # say which settings the file does fit, read from its shapes
        from ..models.loading import infer_robnet

        fit = infer_robnet(loaded.state_dict) if not loaded.metadata.get("model") else None
        if fit is None:
            raise
        settings = " ".join(f"model.{k}={str(v).lower() if isinstance(v, bool) else v}"
                            for k, v in {"name": fit[0], **fit[1]}.items())
        raise RobnetsError(f"{exc}. The file fits {settings}: drop the --config / --set / --model that "
                           f"change these (robnets eval --checkpoint FILE reads them from the file)") from None
    return f"{path} (sha256 {sha256_file(path)[:16]}, {loaded.source_format} format)"


def attack_set(config: Config, model: nn.Module, step_loop: Any = None) -> dict[str, Any]:
    """Attacks named in ``config.eval.attacks``, parameterized by ``config.attack`` (``step_loop``: see PGD)."""
    attacks = {}
    for spec in config.eval.attacks:
        name = spec.strip().lower()
        if (not config.attack.enabled and name != "clean") or name == "autoattack":
            continue
        label = f"{name}+eot{config.attack.eot_iter}" if config.attack.eot_iter > 1 and name != "clean" else name
        attacks[label] = create_attack(
            name, model, eps=config.attack.eps, alpha=config.attack.step_size, steps=config.attack.steps,
            random_start=config.attack.random_start, l2_eps=config.attack.l2_eps,
            l2_alpha=config.attack.l2_step_size, precision=config.eval.precision, seed=config.eval.attack_seed,
            step_loop=step_loop, eot_iter=config.attack.eot_iter,
        )
    if not attacks and "autoattack" not in [a.strip().lower() for a in config.eval.attacks]:
        raise RobnetsError("no attacks to run: give --attacks (e.g. clean,pgd20)")
    return attacks


def _card_identity(config: Config, model: nn.Module, checkpoint: str | Path | None) -> dict[str, Any]:
    """Name, architecture and authors for a model card: the published weights' entry when the checkpoint is
    one of them, else the checkpoint's file name."""
    from ..models.pretrained import PRETRAINED

    architecture = {"robnet_free": "RobNet-free", "robnet_large_v1": "RobNet-large",
                    "robnet_large_v2": "RobNet-large-v2", "robnet_compact": "RobNet-compact"}.get(
        config.model.name, config.model.name)
    if checkpoint is not None and Path(checkpoint).is_file():
        resolved = Path(checkpoint).resolve()
        for entry in PRETRAINED:
            if entry.path().resolve() == resolved:
                return {"name": f"robnets {entry.name}", "architecture": architecture,
                        "authors": "robnets contributors"}
        return {"name": Path(checkpoint).stem, "architecture": architecture}
    return {"name": f"{config.model.name} (untrained)", "architecture": architecture}


def check_output_folder(folder: Path) -> None:
    """Refuse, before any computation, a run folder that cannot be written (a file in the way, no write
    permission): results computed for an hour must not be lost at the end."""
    if folder.exists() and not folder.is_dir():
        raise RobnetsError(f"--output-dir {folder} is a file, not a folder; choose a folder for the results")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RobnetsError(f"cannot write results under {existing} (no write permission); choose another "
                           f"--output-dir")


def default_run_folder(config: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(config.output_dir) / f"eval-{config.name}-{config.model.name}-{stamp}"


def run_evaluation(
    config: Config,
    *,
    checkpoint: str | Path | None = None,
    untrained: bool = False,
    data_dir: str | Path | None = None,
    download: bool = False,
    output_dir: str | Path | None = None,
    n_attack: int | None = None,
    progress: bool = True,
    log=_LOG,  # noqa: ANN001
    shard: tuple[int, int] | None = None,
    ctx: DistContext | None = None,
    command: str | None = None,
    model: nn.Module | None = None,
    notes: list[str] | tuple[str, ...] = (),
) -> EvaluationRun | None:
    """Evaluate the configured model; write results.json, results.md and config.yaml into a run folder.

    The points are evaluated in blocks (``eval.block_size``, see :mod:`.shards`), each result kept as it comes, so
    that the same command resumes an interrupted run. ``shard=(K, N)`` computes only shard K of N into
    ``<folder>/shard-K-of-N`` (an independent job; ``robnets merge`` combines the shards); under torchrun or slurm
    (``ctx``) every rank computes its shard and rank 0 merges them into the run folder (other ranks return None).
    ``command`` is the command line that computes shard ``{K}``, named for any shard found missing. ``model``
    evaluates that module (float NCHW in [0, 1] in, logits out) instead of the configured one; its weights are
    identified by the sha256 of its state.
    """
    ctx = ctx or DistContext()
    device = resolve_device(config.eval.device)
    if ctx.enabled:
        if shard is not None:
            raise RobnetsError("--shard is for independent jobs; under torchrun or slurm every rank takes its shard")
        device = ctx.device(device.type)
        shard = (ctx.rank, ctx.world_size)
    folder = Path(output_dir) if output_dir else default_run_folder(config)
    if ctx.enabled and not output_dir:
        raise RobnetsError("a distributed evaluation needs --output-dir (every rank writes its shard there)")
    check_output_folder(folder)
    if model is None:
        checkpoint = checkpoint or config.checkpoint.path
        model, weights, note = _model_with_weights(config, checkpoint, untrained)
    else:
        from ..attacks.reference_autoattack import model_digest

        checkpoint = None
        weights = f"{type(model).__name__} given in Python (state sha256 {model_digest(model)})"
        note = f"==> Evaluating the {type(model).__name__} given ({sum(p.numel() for p in model.parameters()):,} " \
               f"parameters)"
    model.to(device).eval()
    dataset = _test_set(config, model, data_dir, download, checkpoint)
    engine, execution = _execution_path(config, model, device)
    attacks = attack_set(config, engine, step_loop=pgd_loop_for(device) if config.eval.execution == "fast" else None)
    batch_size = config.eval.batch_size or config.data.batch_size
    if config.eval.transfer_checkpoint:
        attacks = _transfer_attacks(config, engine, device, log)
    plan = _plan(config, dataset, attacks, n_attack, shard)
    store_folder = folder if shard is None else folder / shard_folder_name(*shard)
    store = ShardStore(store_folder)
    identity = _identity(config, model, checkpoint, weights, dataset, attacks, plan, batch_size,
                         command or _default_command(folder))
    store.open(identity)
    for line in (*notes, note):
        log(line)
    where = f"shard {plan.index} of {plan.count}: blocks {plan.blocks.start}-{plan.blocks.stop - 1} of " \
            f"{plan.blocks_total}" if plan.count > 1 else f"{plan.blocks_total} block(s)"
    log(f"==> Evaluating {config.model.name} on {config.data.dataset} ({len(dataset)} images; n={plan.total}, "
        f"{where} of {plan.block_size}) on {device}{_threads(device)}, {config.eval.precision}, batch {batch_size}; "
        f"results kept in {store.folder}")
    log(f"==> Execution: {execution}")
    started = time.perf_counter()
    run_table(engine, dataset, attacks, plan, store, device=device, batch_size=batch_size,
              precision=config.eval.precision,
              num_workers=config.data.num_workers if config.data.dataset == "imagenet" else 0, progress=progress,
              log=log)
    if "autoattack" in plan.counts:
        eps = config.attack.eps if config.attack.norm == "Linf" else config.attack.l2_eps
        run_autoattack(engine, dataset, plan, store, norm=config.attack.norm, eps=eps,
                       version=config.eval.autoattack_version, seed=config.eval.attack_seed,
                       precision=config.eval.precision, batch_size=batch_size, log=log, progress=progress)
    if config.eval.eps_sweep_255:
        run_sweep(engine, dataset, plan, store, eps_values=[e / 255 for e in config.eval.eps_sweep_255],
                  steps=config.eval.sweep_steps, batch_size=batch_size, device=device,
                  precision=config.eval.precision, seed=config.eval.attack_seed, log=log)
    sanity = []
    if config.eval.sanity != "off" and plan.index == 0:
        sanity = _sanity(config, engine, dataset, min(config.eval.sanity_n, plan.total), device, log)
    store.finish({"sanity": [flag.to_dict() for flag in sanity], "seconds": round(time.perf_counter() - started, 1),
                  "host": platform.node(), "device": str(device), "versions_local": {"torch": torch.__version__},
                  "execution": execution})
    if ctx.enabled:
        ctx.barrier()
        if not ctx.is_main:
            return None
    elif shard is not None:
        log(f"==> shard {shard[0]} of {shard[1]} done in {store.folder}; when every shard is done: robnets merge "
            f"{folder}")
    merged = merge(shard_folders([folder]) if shard is not None else [folder])
    if shard is not None and not ctx.enabled and merged.partial:
        return EvaluationRun(merged.results, store.folder, {"shard": store.folder / SHARD_FILE},
                             {**merged.identity["meta"], "partial": True, "missing_shards": merged.missing})
    return write_merged(merged, folder, config=config, log=log)


def write_merged(merged: Merged, folder: Path, *, config: Config | None = None,
                 log=_LOG) -> EvaluationRun:  # noqa: ANN001
    """Write one run's results from merged shards: results.json / .md, the model card, the ε sweep, config.yaml;
    every file says so when shards are missing."""
    meta = dict(merged.identity["meta"])
    first = next((s for s in merged.shards if s["shard"] == 0), None)
    sanity = (ShardStore(first["folder"]).describe() or {}).get("sanity", []) if first else []
    meta.update(device=first["device"] if first else meta.get("device"), sanity=sanity,
                time=time.strftime("%Y-%m-%d %H:%M:%S"), execution=(ShardStore(first["folder"]).describe() or {}).get(
                    "execution") if first else None)
    count = merged.identity["shard"][1]
    if count > 1 or merged.partial:
        meta["shards"] = merged.shards
    if merged.partial:
        meta.update(partial=True, missing_shards=merged.missing,
                    missing_commands=[merged.commands[k] for k in merged.missing])
        log(f"==> PARTIAL: shard(s) {', '.join(map(str, merged.missing))} of {count} missing or unfinished; "
            f"compute each with: {merged.commands[merged.missing[0]]} (K = {', '.join(map(str, merged.missing))})")
    results = merged.results
    if merged.sweep is not None:
        meta["eps_sweep"] = {"json": str(folder / "eps_sweep.json"), "png": str(folder / "eps_sweep.png")}
    card = model_card(results, meta, **merged.identity["card"])
    if card is not None and merged.partial:
        card["footnote"] = "PARTIAL (shards missing): " + card["footnote"]

    def write_all() -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        if merged.sweep is not None:
            write_sweep(merged.sweep, merged.identity["eps_sweep"]["steps"], folder, partial=merged.partial)
        if card is not None:
            write_json_atomic(folder / "model_info.json", card)
            meta["model_card"] = str(folder / "model_info.json")
        written = write_results(results, folder, {**meta, "per_example": merged.per_example})
        if config is not None:
            written["config"] = save_config(config, folder / "config.yaml")
        elif first and (Path(first["folder"]) / "config.yaml").is_file():
            written["config"] = folder / "config.yaml"
            if Path(first["folder"]).resolve() != folder.resolve():
                write_text_atomic(folder / "config.yaml", (Path(first["folder"]) / "config.yaml").read_text())
        return written

    files = _write_or_explain(write_all, folder, results, log)
    return EvaluationRun(results, folder, files, meta)


def _plan(config: Config, dataset, attacks: dict[str, Any], n_attack: int | None,  # noqa: ANN001
          shard: tuple[int, int] | None) -> Plan:
    """How many points each attack covers: the table's clean row the first n (``eval.n``), attacks at most
    ``n_attack`` of them; AutoAttack and the ε sweep as many as attacks."""
    total = min(len(dataset), config.eval.n or len(dataset))
    if total < 1:
        raise RobnetsError("nothing to evaluate: the dataset (or --n) gives no examples")
    attacked = min(total, n_attack or total)
    counts = {name: (total if attack is None else attacked) for name, attack in attacks.items()}
    if "autoattack" in [a.strip().lower() for a in config.eval.attacks]:
        counts["autoattack"] = attacked
    for eps in config.eval.eps_sweep_255:
        counts[sweep_name(eps / 255)] = attacked
    if not counts:
        raise RobnetsError("no attacks to run: give --attacks (e.g. clean,pgd20)")
    index, count = shard or (0, 1)
    return Plan(counts, config.eval.block_size, index, count)


def _identity(config: Config, model: nn.Module, checkpoint: str | Path | None, weights: str, dataset,  # noqa: ANN001
              attacks: dict[str, Any], plan: Plan, batch_size: int, command: str) -> dict[str, Any]:
    """What a shard measures (two shards of one run agree on all of it but their place) and what its merged
    result needs to be written without the model."""
    from ..attacks.reference_autoattack import reference_version
    from ..version import __version__

    with_aa = "autoattack" in plan.counts
    eps = config.attack.eps if config.attack.norm == "Linf" else config.attack.l2_eps
    sha = sha256_file(checkpoint) if checkpoint is not None and Path(checkpoint).is_file() else None
    return {
        "format": FORMAT, "shard": [plan.index, plan.count], "blocks": [plan.blocks.start, plan.blocks.stop],
        "model": config.model.name, "weights_sha256": sha or weights,
        "points": {"dataset": config.data.dataset, "counts": plan.counts, "digest": points_digest(dataset, plan.total)},
        "block_size": plan.block_size, "batch_size": batch_size,
        "attacks": {name: (attack.describe() if attack is not None else {"precision": config.eval.precision})
                    for name, attack in attacks.items()},
        "autoattack": {"threat_model": config.attack.norm, "eps": eps, "version": config.eval.autoattack_version,
                       "seed": config.eval.attack_seed, "engine": reference_version()} if with_aa else None,
        "eps_sweep": {"eps": [e / 255 for e in config.eval.eps_sweep_255], "steps": config.eval.sweep_steps}
        if config.eval.eps_sweep_255 else None,
        "threat_model": config.attack.norm, "eps": config.attack.eps, "seed": config.eval.attack_seed,
        "precision": config.eval.precision,
        "versions": {"robnets": __version__, **({"autoattack": reference_version()} if with_aa else {})},
        "command": command,
        "meta": {"model": config.model.name, "architecture": str(getattr(model, "genotype", "")),
                 "model_args": getattr(model, "config", {}), "parameters": sum(p.numel() for p in model.parameters()),
                 "dataset": config.data.dataset, "weights": weights, "threat_model": config.attack.norm,
                 "eps": config.attack.eps, "precision": config.eval.precision, "seed": config.seed,
                 **({"published_weights": _published_entry(sha)} if _published_entry(sha) else {})},
        "card": _card_identity(config, model, checkpoint),
    }


def _threads(device: torch.device) -> str:
    return f" with {torch.get_num_threads()} CPU thread(s) (--threads)" if device.type == "cpu" else ""


def _published_entry(sha256: str | None) -> dict[str, Any] | None:
    """The published weights' name and measured numbers, only when the evaluated file is those weights."""
    from ..models.pretrained import PRETRAINED

    entry = next((w for w in PRETRAINED if sha256 is not None and w.sha256 == sha256), None)
    return entry.to_dict() if entry is not None else None


def _default_command(folder: Path) -> str:
    import shlex
    import sys

    args = [a for a in sys.argv[1:] if a != "--distributed"]
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--shard", "--output-dir"):
            skip = True
            continue
        if a.startswith(("--shard=", "--output-dir=")):
            continue
        cleaned.append(a)
    if not cleaned or cleaned[0] != "eval":
        cleaned = ["eval", "..."]
    return " ".join(["robnets", *map(shlex.quote, cleaned), "--shard", "{K}/{N}", "--output-dir",
                     shlex.quote(str(folder))])


# ---------------------------------------------------------------------------------------------- stages

def _model_with_weights(config: Config, checkpoint: str | Path | None, untrained: bool
                        ) -> tuple[nn.Module, str, str]:
    """(model, what its weights are, the line that says so): the checkpoint's weights, or random ones asked for."""
    model = build_model(config)
    if checkpoint is not None and Path(checkpoint).is_dir():
        from ..models.checkpoint import directory_message

        raise RobnetsError(directory_message(Path(checkpoint)))
    if checkpoint is not None and not Path(checkpoint).is_file() and not untrained:
        raise RobnetsError(
            f"checkpoint {checkpoint} not found (the original RobNets download link is dead); pass "
            f"--checkpoint PATH to your weights, or --untrained to evaluate random weights"
        )
    if checkpoint is not None and Path(checkpoint).is_file():
        weights = load_checkpoint_into(model, checkpoint, config.model.name)
        return model, weights, f"==> Loaded weights from {weights}"
    if untrained:
        weights = f"UNTRAINED (random initialization, seed {config.seed})"
        return model, weights, (f"==> NOTE: the weights are UNTRAINED (random initialization, seed {config.seed}); "
                                f"accuracies will be near chance")
    raise RobnetsError("no weights to evaluate: pass --checkpoint PATH (or set checkpoint.path in the "
                       "config), or --untrained for random weights")


def _test_set(config: Config, model: nn.Module, data_dir: str | Path | None, download: bool,  # noqa: ANN202
              checkpoint: str | Path | None = None):
    """The test split, checked against the model (classes, input resolution)."""
    dataset_name = config.data.dataset
    info = DATASETS[dataset_name]
    root = resolve_data_root(data_dir, config.data.root)
    dataset = load_dataset(dataset_name, "test", root, download=download, resize_size=config.data.resize_size,
                           crop_size=config.data.input_size)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and num_classes != info.num_classes:
        if checkpoint is not None and Path(checkpoint).is_file():  # the weights decide the classes, not a setting
            classes = {k: v for k, v in read_checkpoint(checkpoint).state_dict.items() if k == "classifier.weight"}
            if classes and int(classes["classifier.weight"].shape[0]) == num_classes:
                others = ", ".join(n for n, i in DATASETS.items() if i.num_classes == num_classes) or "none here"
                raise RobnetsError(f"the weights in {checkpoint} classify {num_classes} classes (their classifier has "
                                   f"{num_classes} outputs) but {dataset_name} has {info.num_classes}: evaluate them "
                                   f"on a {num_classes}-class dataset ({others}: --dataset), or use weights trained "
                                   f"on {dataset_name}")
        raise RobnetsError(f"{dataset_name} has {info.num_classes} classes but the model has {num_classes} "
                           f"outputs; set model.num_classes={info.num_classes}")
    imagenet_stem = bool(getattr(model, "config", {}).get("imagenet_stem"))
    if imagenet_stem != (info.image_size == 224):
        raise RobnetsError(f"{dataset_name} images are {info.image_size}px but the model "
                           f"{'has' if imagenet_stem else 'lacks'} the ImageNet stem; set "
                           f"model.imagenet_stem={str(info.image_size == 224).lower()}")
    return dataset


def _execution_path(config: Config, model: nn.Module, device: torch.device) -> tuple[nn.Module, str]:
    """(what the attacks run on, its description): the fast path, or the original's plain execution."""
    if config.eval.execution == "fast":
        return accelerate(model, device, compile=True if config.eval.compile else None)
    if isinstance(model, RobNet):
        model.set_reference_mode(True)
    return model, "plain (as the original implementation: every op, zero edges multiplied)"


def _transfer_attacks(config: Config, engine: nn.Module, device: torch.device, log) -> dict[str, Any]:  # noqa: ANN001
    """The configured attacks crafted on ``eval.transfer_checkpoint`` and scored on ``engine``."""
    from ..models.loading import load_model
    from .suites import TransferAttack

    source = load_model(config.eval.transfer_checkpoint, config.eval.transfer_model).to(device).eval()
    source_engine = (accelerate(source, device, compile=True if config.eval.compile else None)[0]
                     if config.eval.execution == "fast" else source)
    source_attacks = attack_set(config, source_engine)
    attacks = {f"transfer:{k}": (TransferAttack(engine, a) if a is not None else None)
               for k, a in source_attacks.items()}
    log(f"==> Transfer attacks crafted on {config.eval.transfer_checkpoint}")
    return {k.replace("transfer:clean", "clean"): v for k, v in attacks.items()}


def _sanity(config: Config, engine: nn.Module, dataset, count: int, device: torch.device, log) -> list:  # noqa: ANN001
    """The sanity checks on the first ``count`` images (flags written into the results)."""
    from .runner import iterate_batches
    from .sanity import run_sanity_checks

    xs, ys = next(iterate_batches(dataset, count, count))
    return run_sanity_checks(engine, xs.to(device), ys.to(device), eps=config.attack.eps, level=config.eval.sanity,
                             precision=config.eval.precision, num_classes=getattr(dataset, "num_classes", None),
                             log=lambda line: log(f"==> sanity {line}"))


def _write_or_explain(write, folder: Path, results: list[AttackResult], log):  # noqa: ANN001, ANN202
    """Write; when the disk refuses (full, read-only), show the table and fail in one line."""
    try:
        return write()
    except OSError as exc:
        log("==> the results could not be written; here they are:\n" + results_table(results))
        raise RobnetsError(f"cannot write results into {folder}: {exc.strerror or exc}; the table above holds "
                           f"them (free space or choose another --output-dir)") from None
