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


def _robustness(meta: dict[str, str]) -> float:
    for key in ("test_pgd20", "best_val_robust", "val_robust"):
        try:
            return float(meta[key])
        except (KeyError, TypeError, ValueError):
            continue
    return 0.0


def find_shipped_weights(model: str | None = None, dataset: str = "cifar10") -> Path | None:
    """The most robust shipped weights (for ``model``, or any model) on ``dataset``; None when none ship."""
    candidates = []
    for path in sorted(shipped_weights().values()):
        meta = shipped_metadata(path)
        if (model is None or meta.get("model") == model) and meta.get("dataset", dataset) == dataset:
            candidates.append((_robustness(meta), path))
    return max(candidates)[1] if candidates else None
