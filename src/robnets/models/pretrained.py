"""Weights trained by this project and shipped inside the package (``robnets/weights/*.safetensors``).

Each file's safetensors metadata names its model, architecture, dataset, threat model and eps, so the
files are self-describing; nothing is downloaded.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from safetensors import safe_open


def shipped_weights() -> dict[str, Path]:
    """Shipped weight files by stem (e.g. ``robnet_free_cifar10``)."""
    folder = resources.files("robnets").joinpath("weights")
    if not folder.is_dir():
        return {}
    return {Path(str(f)).name.removesuffix(".safetensors"): Path(str(f))
            for f in folder.iterdir() if str(f).endswith(".safetensors")}


def shipped_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def find_shipped_weights(model: str, dataset: str = "cifar10") -> Path | None:
    """The best shipped weights for ``model`` on ``dataset``, or None when the project ships none yet."""
    for path in sorted(shipped_weights().values()):
        meta = shipped_metadata(path)
        if meta.get("model") == model and meta.get("dataset", dataset) == dataset:
            return path
    return None
