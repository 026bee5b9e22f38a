"""From a resolved config to result files: build the model, load weights, load data, attack, report."""

from __future__ import annotations

import logging
import os
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
from ..io import sha256_file, write_json_atomic
from ..acceleration import accelerate, pgd_loop_for
from ..models import RobNet
from ..models.checkpoint import check_state_dict_matches, load_weights, read_checkpoint
from ..models.registry import model_info
from .report import model_card, results_table, write_results
from ..runtime import resolve_device
from .runner import AttackResult, evaluate


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
    load_weights(model, loaded, model_name=model_name, source=f"checkpoint {path}")
    return f"{path} (sha256 {sha256_file(path)[:16]}, {loaded.source_format} format)"


def attack_set(config: Config, model: nn.Module, step_loop: Any = None) -> dict[str, Any]:
    """Attacks named in ``config.eval.attacks``, parameterized by ``config.attack`` (``step_loop``: see PGD)."""
    attacks = {}
    for spec in config.eval.attacks:
        name = spec.strip().lower()
        if (not config.attack.enabled and name != "clean") or name == "autoattack":
            continue
        attacks[name] = create_attack(
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
    log=logging.getLogger("robnets.evaluation").info,  # noqa: ANN001
) -> EvaluationRun:
    """Evaluate the configured model; write results.json, results.md and config.yaml into a run folder.

    Stages: the folder is checked, the model built and its weights loaded, the test set loaded and checked
    against the model, the execution path chosen, the attacks built; then the attack table, AutoAttack, the
    eps sweep and the sanity checks run, and everything is written.
    """
    device = resolve_device(config.eval.device)
    folder = Path(output_dir) if output_dir else default_run_folder(config)
    check_output_folder(folder)
    checkpoint = checkpoint or config.checkpoint.path
    model, weights, note = _model_with_weights(config, checkpoint, untrained)
    model.to(device).eval()
    dataset = _test_set(config, model, data_dir, download)
    engine, execution = _execution_path(config, model, device)
    attacks = attack_set(config, engine, step_loop=pgd_loop_for(device) if config.eval.execution == "fast" else None)
    log(note)
    batch_size = config.eval.batch_size or config.data.batch_size
    log(f"==> Evaluating {config.model.name} on {config.data.dataset} ({len(dataset)} images; "
        f"n={config.eval.n or 'all'}) on {device}, {config.eval.precision}, batch {batch_size}")
    log(f"==> Execution: {execution}")
    if config.eval.transfer_checkpoint:
        attacks = _transfer_attacks(config, engine, device, log)
    # the first images of the table's own subset, never more than --n / --n-attack allow
    limit = min(len(dataset), config.eval.n or len(dataset), n_attack or len(dataset))

    partial_meta = {"model": config.model.name, "dataset": config.data.dataset, "weights": weights, "partial": True}

    def keep_partial(so_far: list[AttackResult]) -> None:  # a crash later keeps what is done
        _write_or_explain(lambda: write_results(so_far, folder, partial_meta), folder, so_far, log)

    results = evaluate(engine, dataset, attacks, device=device, batch_size=batch_size, n=config.eval.n,
                       n_attack=n_attack, precision=config.eval.precision,
                       num_workers=config.data.num_workers if config.data.dataset == "imagenet" else 0,
                       progress=progress, on_result=keep_partial) if attacks else []
    if "autoattack" in [a.strip().lower() for a in config.eval.attacks]:
        results += _autoattack(config, engine, dataset, limit, batch_size, folder, resumable_here=bool(output_dir),
                               log=log)
    sweep = _eps_sweep(config, engine, dataset, limit, batch_size, device, folder, log) \
        if config.eval.eps_sweep_255 else None
    sanity = _sanity(config, engine, dataset, min(config.eval.sanity_n, limit), device, log) \
        if config.eval.sanity != "off" else []
    meta = _metadata(config, model, weights, device, execution, sanity)
    if sweep is not None:
        meta["eps_sweep"] = {"json": str(folder / "eps_sweep.json"), "png": str(folder / "eps_sweep.png")}
    card = model_card(results, meta, **_card_identity(config, model, checkpoint))

    def write_all() -> dict[str, Path]:
        if card is not None:
            write_json_atomic(folder / "model_info.json", card)
            meta["model_card"] = str(folder / "model_info.json")
        written = write_results(results, folder, meta)
        written["config"] = save_config(config, folder / "config.yaml")
        return written

    files = _write_or_explain(write_all, folder, results, log)
    return EvaluationRun(results, folder, files, meta)


# ---------------------------------------------------------------------------------------------- stages

def _model_with_weights(config: Config, checkpoint: str | Path | None, untrained: bool
                        ) -> tuple[nn.Module, str, str]:
    """(model, what its weights are, the line that says so): the checkpoint's weights, or random ones asked for."""
    model = build_model(config)
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


def _test_set(config: Config, model: nn.Module, data_dir: str | Path | None, download: bool):  # noqa: ANN202
    """The test split, checked against the model (classes, input resolution)."""
    dataset_name = config.data.dataset
    info = DATASETS[dataset_name]
    root = resolve_data_root(data_dir, config.data.root)
    dataset = load_dataset(dataset_name, "test", root, download=download, resize_size=config.data.resize_size,
                           crop_size=config.data.input_size)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and num_classes != info.num_classes:
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


def _autoattack(config: Config, engine: nn.Module, dataset, count: int, batch_size: int, folder: Path, *,  # noqa: ANN001
                resumable_here: bool, log) -> list[AttackResult]:  # noqa: ANN001
    """The reference AutoAttack on the first ``count`` images, its state kept in the run folder."""
    from .suites import collect, run_autoattack

    x_all, y_all = collect(dataset, count, batch_size)
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / "autoattack_state.safetensors"
    log(f"==> AutoAttack {'resumes from' if state.is_file() else 'keeps its state in'} {state}"
        + ("" if resumable_here else f"; if it stops, continue it with --output-dir {folder}"))
    eps = config.attack.eps if config.attack.norm == "Linf" else config.attack.l2_eps
    return run_autoattack(engine, x_all, y_all, norm=config.attack.norm, eps=eps,
                          version=config.eval.autoattack_version, seed=config.eval.attack_seed,
                          precision=config.eval.precision, batch_size=batch_size, state_path=state, log=log)


def _eps_sweep(config: Config, engine: nn.Module, dataset, count: int, batch_size: int, device: torch.device,  # noqa: ANN001
               folder: Path, log):  # noqa: ANN001, ANN202
    from .suites import eps_sweep

    folder.mkdir(parents=True, exist_ok=True)
    return eps_sweep(engine, dataset, eps_values=[e / 255 for e in config.eval.eps_sweep_255],
                     steps=config.eval.sweep_steps, n=count, batch_size=batch_size, device=device,
                     precision=config.eval.precision, seed=config.eval.attack_seed, folder=folder, log=log)


def _sanity(config: Config, engine: nn.Module, dataset, count: int, device: torch.device, log) -> list:  # noqa: ANN001
    """The sanity checks on the first ``count`` images (flags written into the results)."""
    from .runner import iterate_batches
    from .sanity import run_sanity_checks

    xs, ys = next(iterate_batches(dataset, count, count))
    return run_sanity_checks(engine, xs.to(device), ys.to(device), eps=config.attack.eps, level=config.eval.sanity,
                             precision=config.eval.precision, log=lambda line: log(f"==> sanity {line}"))


def _metadata(config: Config, model: nn.Module, weights: str, device: torch.device, execution: str,
              sanity: list) -> dict[str, Any]:
    return {
        "model": config.model.name,
        "architecture": str(getattr(model, "genotype", "")),
        "model_args": getattr(model, "config", {}),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dataset": config.data.dataset,
        "weights": weights,
        "threat_model": config.attack.norm,
        "eps": config.attack.eps,
        "device": str(device),
        "precision": config.eval.precision,
        "execution": execution,
        "seed": config.seed,
        "published": model_info(config.model.name).published,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sanity": [flag.to_dict() for flag in sanity],
    }


def _write_or_explain(write, folder: Path, results: list[AttackResult], log):  # noqa: ANN001, ANN202
    """Write; when the disk refuses (full, read-only), show the table and fail in one line."""
    try:
        return write()
    except OSError as exc:
        log("==> the results could not be written; here they are:\n" + results_table(results))
        raise RobnetsError(f"cannot write results into {folder}: {exc.strerror or exc}; the table above holds "
                           f"them (free space or choose another --output-dir)") from None
