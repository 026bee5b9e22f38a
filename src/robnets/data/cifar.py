"""CIFAR-10 and CIFAR-100 from the official python folders or from ``.npz`` arrays.

The official ``cifar-10-batches-py`` files are Python pickles. They are read with an unpickler that can
build only numpy arrays and plain containers, so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .arrays import ImageArrayDataset

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for ``bytes`` (latin-1 only)."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r} in a data file")
    return text.encode("latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction (and the latin-1 encoding of
    ``bytes`` that Python 3 writes into protocol-2 pickles)."""

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _NUMPY_GLOBALS:
            if module == "numpy.core.multiarray":  # old pickles name numpy's private module by its old path
                module = "numpy._core.multiarray" if hasattr(np, "_core") else module
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_pickle_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            batch = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a CIFAR batch
        raise DataError(f"cannot read {path}: not a CIFAR python batch ({type(exc).__name__}: {exc}); "
                        f"is it truncated or corrupt? re-download it (--download)") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR python batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _batch_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle_batch(path)
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path} lacks '{label_key}' or 'data'; is it the right dataset's file?")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' should be (N, 3072) uint8 rows, got {data.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(batch[label_key], dtype=np.int64)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "images" not in arrays or "labels" not in arrays:
                raise DataError(f"{path} must hold arrays 'images' (uint8 N x 32 x 32 x 3) and 'labels'; "
                                f"found {sorted(arrays.files)}")
            return arrays["images"], arrays["labels"]
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); is it truncated or corrupt?") from None


def _shard_index(path: Path) -> int:
    match = re.search(r"_(\d+)\.npz$", path.name)
    return int(match.group(1)) if match else -1


def npz_files(folder: Path, split: str) -> list[Path]:
    """The ``.npz`` files of a split: ``<split>.npz`` or shards ``<split>_0.npz, <split>_1.npz, ...``."""
    single = folder / f"{split}.npz"
    shards = sorted(folder.glob(f"{split}_*.npz"), key=_shard_index)
    shards = [p for p in shards if _shard_index(p) >= 0]
    if single.is_file() and shards:
        raise DataError(f"{folder} holds both {single.name} and shards {shards[0].name}...; keep one layout")
    if shards:
        expected = list(range(len(shards)))
        if [_shard_index(p) for p in shards] != expected:
            raise DataError(f"shards of '{split}' in {folder} are not numbered 0..{len(shards) - 1}: "
                            f"{[p.name for p in shards]}; a shard is missing")
        return shards
    return [single] if single.is_file() else []


def load_npz_split(folder: Path, split: str, num_classes: int, name: str) -> ImageArrayDataset:
    files = npz_files(folder, split)
    if not files:
        raise DataError(f"no {split}.npz or {split}_0.npz in {folder}")
    parts = [_read_npz(p) for p in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    if images.ndim != 4 or tuple(images.shape[1:]) != (32, 32, 3):
        raise DataError(f"{name} {split} in {folder}: images must be N x 32 x 32 x 3 (uint8, HWC), got "
                        f"{'x'.join(str(d) for d in images.shape)}; this is not {name} at its resolution")
    return ImageArrayDataset(images, labels, num_classes=num_classes, name=f"{name} {split} ({folder})")


def load_cifar10_official(folder: Path, split: str) -> ImageArrayDataset:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_batch_arrays(folder / n, "labels") for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageArrayDataset(images, labels, num_classes=10, name=f"cifar10 {split} ({folder})")


def load_cifar100_official(folder: Path, split: str) -> ImageArrayDataset:
    images, labels = _batch_arrays(folder / ("train" if split == "train" else "test"), "fine_labels")
    return ImageArrayDataset(images, labels, num_classes=100, name=f"cifar100 {split} ({folder})")
