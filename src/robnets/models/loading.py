"""Building a model for a checkpoint: from a project file's metadata, or inferred from an original file's keys
and shapes; :func:`load_model` builds (or takes) the model and loads the weights strictly."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, RobnetsError
from .checkpoint import check_state_dict_matches, load_weights, read_checkpoint
from .registry import create_model, model_info


def model_from_metadata(metadata: dict[str, str], source: str,
                         state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Build the model the metadata describes; with ``state_dict``, first on the meta device (no memory) to
    check that the file's tensors fit it, so that metadata cannot make the loader allocate what it says."""
    if state_dict is not None:
        with torch.device("meta"):
            described = model_from_metadata(metadata, source)
        check_state_dict_matches(described, state_dict, f"{source} (its tensors against its own metadata)",
                                 metadata.get("model", ""))
    arch = metadata.get("architecture")
    name = metadata.get("model")
    try:
        args = json.loads(metadata.get("model_args", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{source}: metadata 'model_args' is not valid JSON") from None
    if not isinstance(args, dict):
        raise CheckpointError(f"{source}: metadata 'model_args' must be a JSON object of constructor arguments, "
                              f"got {type(args).__name__}")
    if name is None and arch is None:
        raise CheckpointError(
            f"{source} carries no architecture metadata; pass the model, e.g. "
            f"load_model(path, 'robnet_free', C=36) or --model robnet_free"
        )
    if name:
        info = model_info(name)
        if info.genotype is not None and (arch is None or str(info.genotype) == arch):
            return create_model(name, **args)
    if arch is None:
        return create_model(name, **args)
    return create_model("robnet", genotype=arch, **args)


_PRESETS = ("robnet_free", "robnet_large_v1", "robnet_large_v2", "robnet_compact")


def _signature(state_dict: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def infer_robnet(state_dict: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """The registered RobNet and constructor arguments a weights-only checkpoint fits, read from its keys and
    shapes: width from the stem, depth from the cell count, classes from the classifier, and the architecture
    from which edges hold weights. None when no preset fits exactly or two different architectures would."""
    imagenet = "stem0.0.weight" in state_dict
    stem = state_dict.get("stem0.0.weight" if imagenet else "stem.0.weight")
    head = state_dict.get("classifier.weight")
    cells = {int(m.group(1)) for k in state_dict for m in [re.match(r"cells\.(\d+)\.", k)] if m}
    if stem is None or head is None or not cells:
        return None
    C = int(stem.shape[0]) * 2 if imagenet else int(stem.shape[0]) // 3  # stem0 has C/2 maps, stem 3C
    wanted = _signature(state_dict)
    fits: list[tuple[str, dict[str, Any]]] = []
    for name in _PRESETS:
        kwargs = {"C": C, "layers": max(cells) + 1, "num_classes": int(head.shape[0]), "imagenet_stem": imagenet}
        try:
            with torch.device("meta"):
                model = create_model(name, **kwargs)
        except Exception:  # noqa: BLE001  (arguments this preset cannot take)
            continue
        if _signature(model.state_dict()) == wanted:
            fits.append((name, kwargs))
    if not fits:
        return None
    genotypes = {str(model_info(name).genotype) for name, _ in fits}
    if len(genotypes) > 1:
        return None
    # one architecture: prefer the preset whose own defaults are these arguments (robnet_large_v2 at C=64, 33 cells)
    # (robnet_compact only at its own size: other sizes of that cell are the paper's robnet_large)
    def own(fit: tuple[str, dict[str, Any]]) -> int:
        defaults = model_info(fit[0]).default_args
        if fit[0] == "robnet_compact" and (defaults["C"], defaults["layers"]) != (fit[1]["C"], fit[1]["layers"]):
            return -1
        return sum(defaults.get(k) == v for k, v in fit[1].items())
    return max(fits, key=own)


def load_model(
    checkpoint: str | os.PathLike,
    model: str | nn.Module | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """Build (or take) a model and load a checkpoint into it, strictly; returns it in eval mode.

    ``model`` may be a registered name (``'robnet_free'``) with constructor overrides in ``model_kwargs``
    (original names such as ``AdPoolSize`` work too), an ``nn.Module``, or ``None`` for a safetensors file
    of this project, whose metadata names the architecture.
    """
    loaded = read_checkpoint(checkpoint)
    source = f"checkpoint {checkpoint}"
    if isinstance(model, nn.Module):
        net, name = model, type(model).__name__
    elif isinstance(model, str):
        net, name = create_model(model, **model_kwargs), model
    elif model is None:
        if loaded.source_format == "safetensors" and (loaded.metadata.get("model") or
                                                      loaded.metadata.get("architecture")):
            net = model_from_metadata(loaded.metadata, source, loaded.state_dict)
            name = loaded.metadata.get("model", "robnet")
        else:
            fit = infer_robnet(loaded.state_dict)
            if fit is None:
                raise CheckpointError(
                    f"{source} ({loaded.source_format} format) has keys and shapes that fit no RobNet preset "
                    f"unambiguously; name the model, e.g. load_model(path, 'robnet_free', **model_param)"
                )
            name, kwargs = fit
            net = create_model(name, **{**kwargs, **model_kwargs})
    else:
        raise RobnetsError(f"model must be a registered name or an nn.Module, got {type(model).__name__}")
    arch = loaded.metadata.get("architecture")
    genotype = getattr(net, "genotype", None)
    if arch and genotype is not None and str(genotype) != arch:
        raise CheckpointError(
            f"{source} was saved for architecture {arch[:40]}... but the model is {str(genotype)[:40]}...; "
            f"load it without naming a model to rebuild the saved architecture"
        )
    load_weights(net, loaded, model_name=name, source=source)
    net.checkpoint_metadata = dict(loaded.metadata)  # type: ignore[attr-defined]
    return net.eval()
