"""Reading and writing model weights.

Accepted inputs:

* checkpoints of the original RobNets code (``.pth.tar``: a dict with ``state_dict``, keys maybe prefixed
  ``module.`` by DistributedDataParallel, maybe holding pickled optimizer/scheduler objects);
* plain state dicts saved with ``torch.save``;
* this project's safetensors files (weights + metadata: architecture string, model arguments, dataset,
  threat model, eps).

Nothing is unpickled unsafely: torch files are read with ``torch.load(weights_only=True)``. Objects of
classes a checkpoint references but that have no business in a weights file (the original saved its
``lr_scheduler.CosineLRScheduler`` object) are replaced by inert placeholders: their modules are never
imported and none of their code runs; only tensors are kept.
"""

from __future__ import annotations

import collections
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..io import atomic_path

SAFETENSORS_FORMAT = "robnets"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


class OpaqueObject:
    """Inert stand-in for a pickled object of a class we refuse to import; keeps its raw state as data."""

    _original_class = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<opaque {self._original_class}>"


def _plain_dict(*_args: Any, **_kwargs: Any) -> dict:
    """Stand-in for ``collections.defaultdict``: its items are loaded into a plain dict."""
    return {}


def _placeholder_for(name: str) -> Any:
    if name == "collections.defaultdict":
        return (_plain_dict, name)
    if name == "builtins.dict":
        return dict
    if name == "collections.OrderedDict":
        return collections.OrderedDict
    cls = type("Opaque_" + re.sub(r"\W", "_", name), (OpaqueObject,), {"_original_class": name})
    return (cls, name)


def _torch_load_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with inert placeholders for foreign classes."""
    names: list[str] = []
    if zipfile.is_zipfile(path):
        try:
            names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # noqa: BLE001 - fall back to discovering names one error at a time
            names = []
    for _ in range(32):
        placeholders = [_placeholder_for(n) for n in names]
        try:
            with torch.serialization.safe_globals(placeholders):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises several types for unreadable files
            match = re.search(r"GLOBAL ([\w.]+)", str(exc))
            # a blocked module, or a global that an inert placeholder could not stand in for (legacy pickles
            # name builtins such as eval without their module): refused, and said so
            if match and ("is blocked" in str(exc) or match.group(1) in names):
                raise CheckpointError(
                    f"refusing to load checkpoint {path}: it references {match.group(1)}, which could run code "
                    f"and has no place in a weights file; re-save only its state_dict from a trusted source"
                ) from None
            if match:
                names.append(match.group(1))
                continue
            reason = str(exc).strip().splitlines()
            detail = next((line for line in reason if "error" in line.lower() and line.strip()), reason[0] if reason else "")
            raise CheckpointError(
                f"cannot read checkpoint {path}: not a valid PyTorch or safetensors file "
                f"({type(exc).__name__}: {detail[:160]}); is it truncated or corrupt?"
            ) from None
    raise CheckpointError(f"cannot read checkpoint {path}: it references too many foreign classes")


@dataclass
class LoadedCheckpoint:
    """Weights from any supported checkpoint, with what else the file said about them."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    source_format: str = "state_dict"  # 'original', 'state_dict' or 'safetensors'
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. epoch, best_acc of original checkpoints


def tensors_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the tensors (written into metadata, checked at load)."""
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def directory_message(path: Path) -> str:
    """What to say when a folder is given where a weights file belongs (with the weights files it holds)."""
    found = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".pt", ".pth",
                                                                                      ".tar") and p.name != "state.pt")
    hint = f": it holds {', '.join(found[:4])}; give one of them, e.g. {path / found[0]}" if found else \
        "; give the weights file itself (a training run writes final.safetensors)"
    return f"checkpoint {path} is a directory, not a weights file{hint}"


def read_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read weights (and metadata) from an original, plain or safetensors checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(directory_message(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; check the path (--checkpoint PATH)")
    if _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                state_dict = {k: handle.get_tensor(k) for k in handle.keys()}
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"cannot read safetensors file {path}: {exc}; is it truncated?") from None
        recorded = metadata.get("tensors_sha256")
        if recorded is not None and tensors_digest(state_dict) != recorded:
            raise CheckpointError(f"{path}: its tensors do not have the checksum its metadata records "
                                  f"(tensors_sha256); the file was changed or damaged after it was written")
        return LoadedCheckpoint(state_dict, metadata, "safetensors")

    obj = _torch_load_weights_only(path)
    extras: dict[str, Any] = {}
    source_format = "state_dict"
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in _STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            raise CheckpointError(
                f"checkpoint {path} holds no weights: expected a state dict or a dict with 'state_dict', "
                f"found keys {sorted(map(str, obj))[:8]}"
            )
        extras = {k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool))}
        obj = obj[key]
        source_format = "original"
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors (found {type(obj).__name__})")
    return LoadedCheckpoint(_strip_wrapper_prefixes(dict(obj)), {}, source_format, extras)


def _fmt_shape(shape: Any) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_state_dict_matches(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint",
                             model_name: str = "") -> None:
    """Raise one clear CheckpointError naming the first mismatching keys and shapes, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if not (missing or unexpected or wrong_shape):
        return
    parts = []
    for k in wrong_shape[:3]:
        parts.append(f"{k} is {_fmt_shape(state_dict[k].shape)} in the checkpoint but {_fmt_shape(own[k].shape)} "
                     f"in the model")
    if missing:
        parts.append(f"missing from the checkpoint: {', '.join(missing[:3])}")
    if unexpected:
        parts.append(f"not in the model: {', '.join(unexpected[:3])}")
    counts = f"{len(wrong_shape)} shape mismatches, {len(missing)} missing, {len(unexpected)} unexpected keys"
    hint = "check the architecture and its arguments (C, layers, num_classes, share, imagenet_stem)"
    if wrong_shape and all(k.startswith("classifier.") for k in wrong_shape) and not (missing or unexpected):
        hint = (f"the classifier has {state_dict['classifier.weight'].shape[0]} outputs in the checkpoint; "
                f"set num_classes to match")
    name = f" {model_name}" if model_name else ""
    raise CheckpointError(f"{source} does not match model{name}: {'; '.join(parts)} ({counts}); {hint}")


def load_weights(model: nn.Module, checkpoint: str | os.PathLike | LoadedCheckpoint, model_name: str = "",
                 source: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint into ``model`` with strict key and shape matching; returns what was read."""
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else read_checkpoint(checkpoint)
    if source is None:
        source = "checkpoint" if isinstance(checkpoint, LoadedCheckpoint) else f"checkpoint {checkpoint}"
    check_state_dict_matches(model, loaded.state_dict, source, model_name)
    check_tensor_values(model, loaded.state_dict, source)
    model.load_state_dict(loaded.state_dict, strict=True)
    return loaded


def check_tensor_values(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Refuse values that cannot be right: non-finite floats, and integer or boolean tensors where the model
    holds floating-point ones (loading would cast them into meaningless weights)."""
    own = model.state_dict()
    for key, value in state_dict.items():
        if own[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{source}: {key} is {str(value.dtype).removeprefix('torch.')} but the model "
                                  f"needs floating-point values there; the file is not a weights file of this model")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: {key} holds NaN or infinite values; the weights are damaged or come "
                                  f"from a diverged run, and no accuracy measured with them would mean anything")


def model_spec(model: nn.Module) -> dict[str, str]:
    """Architecture metadata for a RobNet-like model (genotype string and constructor arguments)."""
    spec: dict[str, str] = {}
    genotype = getattr(model, "genotype", None)
    if genotype is not None:
        spec["architecture"] = str(genotype)
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        spec["model_args"] = json.dumps(config, sort_keys=True)
    name = getattr(model, "registry_name", None)
    if name:
        spec["model"] = name
    return spec


def save_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    model_name: str | None = None,
    dataset: str | None = None,
    threat_model: str | None = None,
    eps: float | None = None,
    dtype: torch.dtype | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write the model's weights as safetensors with metadata, atomically.

    ``dtype=torch.float16`` halves the file (floating tensors only); loading casts back to the model dtype.
    """
    from safetensors.torch import save_file

    from ..version import __version__

    path = Path(path)
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.contiguous().clone()
    metadata = {"format": SAFETENSORS_FORMAT, "robnets_version": __version__, **model_spec(model),
                "tensors_sha256": tensors_digest(state)}
    if model_name:
        metadata["model"] = model_name
    for key, value in (("dataset", dataset), ("threat_model", threat_model), ("eps", eps)):
        if value is not None:
            metadata[key] = repr(float(value)) if key == "eps" else str(value)
    for key, value in (extra_metadata or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path
