"""Datasets: CIFAR-10 (official folder, ``.npz`` arrays, sharded ``.npz``), CIFAR-100, SVHN, ImageNet
folders, and a small real CIFAR-10 test sample embedded in the package.

All datasets yield float NCHW images in [0, 1] (never normalized: ε must mean pixels) and int64 labels.
The data root comes from the caller (CLI ``--data-dir``), else ``$ROBNETS_DATA``, else the config's
``data_root``, else ``./data``. Nothing is downloaded unless ``download=True`` is asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataError, did_you_mean
from .arrays import ImageArrayDataset
from .cifar import (CIFAR10_CLASSES, load_cifar10_official, load_cifar100_official, load_npz_split,
                    npz_files)
from .imagenet import ImageNetFolder, imagenet_wnids
from .svhn import load_svhn_mat

ENV_DATA_ROOT = "ROBNETS_DATA"
SAMPLE_NAME = "cifar10-sample"
_SAMPLE_FILE = "assets/cifar10_test_first500.npz"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_size: int
    splits: tuple[str, ...]
    expected_layout: str


DATASETS = {
    "cifar10": DatasetInfo("cifar10", 10, 32, ("train", "test"),
                           "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch} (official python version) "
                           "or <root>/cifar10/{train.npz|train_0.npz..,test.npz} (arrays 'images', 'labels')"),
    "cifar100": DatasetInfo("cifar100", 100, 32, ("train", "test"),
                            "<root>/cifar-100-python/{train,test} (official python version)"),
    "svhn": DatasetInfo("svhn", 10, 32, ("train", "test"), "<root>/svhn/{train_32x32.mat,test_32x32.mat}"),
    "imagenet": DatasetInfo("imagenet", 1000, 224, ("val",), "<root>/imagenet/val/<wnid>/*.JPEG"),
    SAMPLE_NAME: DatasetInfo(SAMPLE_NAME, 10, 32, ("test",), "embedded in the package"),
}
# Names used by the original configs and common spellings.
_ALIASES = {"svhn": "svhn", "imgnet": "imagenet", "imagenet1k": "imagenet", "cifar-10": "cifar10",
            "cifar-100": "cifar100", "sample": SAMPLE_NAME}


def canonical_dataset_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}{did_you_mean(key, DATASETS)}; "
                        f"known: {', '.join(DATASETS)}")
    return key


def resolve_data_root(cli_value: str | os.PathLike | None = None,
                      config_value: str | os.PathLike | None = None) -> Path:
    """CLI value, else $ROBNETS_DATA, else the config's value, else ./data."""
    for value in (cli_value, os.environ.get(ENV_DATA_ROOT) or None, config_value):
        if value:
            return Path(value).expanduser()
    return Path("data")


def load_sample() -> ImageArrayDataset:
    """The first 500 images of the official CIFAR-10 test set, with labels, shipped in the package."""
    with resources.files("robnets.data").joinpath(_SAMPLE_FILE).open("rb") as handle:
        with np.load(handle) as arrays:
            images, labels = arrays["images"], arrays["labels"]
    return ImageArrayDataset(images, labels, num_classes=10, name=SAMPLE_NAME)


def _first_dir(candidates: list[Path], test) -> Path | None:  # noqa: ANN001
    return next((c for c in candidates if c.is_dir() and test(c)), None)


def _not_found(name: str, root: Path) -> DataError:
    info = DATASETS[name]
    return DataError(f"{name} not found under {root}: expected {info.expected_layout.replace('<root>', str(root))}; "
                     f"pass --data-dir, set {ENV_DATA_ROOT}, or add --download")


def _download(name: str, root: Path, split: str) -> None:
    """Fetch a dataset with torchvision (only when the user asks for it)."""
    from torchvision import datasets

    root.mkdir(parents=True, exist_ok=True)
    try:
        if name == "cifar10":
            datasets.CIFAR10(str(root), train=split == "train", download=True)
        elif name == "cifar100":
            datasets.CIFAR100(str(root), train=split == "train", download=True)
        elif name == "svhn":
            datasets.SVHN(str(root / "svhn"), split=split, download=True)
        else:
            raise DataError(f"{name} cannot be downloaded automatically; place it as "
                            f"{DATASETS[name].expected_layout}")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"downloading {name} into {root} failed ({type(exc).__name__}: {exc})") from None


def load_dataset(name: str, split: str = "test", root: str | os.PathLike | None = None, *,
                 download: bool = False, resize_size: int = 256, crop_size: int = 224) -> Dataset:
    """Load a dataset split. ``root`` defaults as :func:`resolve_data_root` says.

    Returns an :class:`ImageArrayDataset` for the 32x32 datasets and an :class:`ImageNetFolder` for ImageNet.
    """
    name = canonical_dataset_name(name)
    info = DATASETS[name]
    if name == "imagenet" and split == "test":
        split = "val"
    if split not in info.splits:
        raise DataError(f"{name} has no split {split!r}; use one of {', '.join(info.splits)}")
    if name == SAMPLE_NAME:
        return load_sample()
    root = Path(root) if root is not None else resolve_data_root()
    if download:
        _download(name, root, split)

    if name == "cifar10":
        official = _first_dir([root, root / "cifar-10-batches-py", root / "cifar10" / "cifar-10-batches-py"],
                              lambda d: (d / "test_batch").is_file() or (d / "data_batch_1").is_file())
        if official is not None:
            return load_cifar10_official(official, split)
        arrays = _first_dir([root, root / "cifar10"], lambda d: bool(npz_files(d, split)))
        if arrays is not None:
            return load_npz_split(arrays, split, 10, "cifar10")
    elif name == "cifar100":
        official = _first_dir([root, root / "cifar-100-python", root / "cifar100" / "cifar-100-python"],
                              lambda d: (d / "test").is_file() or (d / "train").is_file())
        if official is not None:
            return load_cifar100_official(official, split)
        arrays = _first_dir([root, root / "cifar100"], lambda d: bool(npz_files(d, split)))
        if arrays is not None:
            return load_npz_split(arrays, split, 100, "cifar100")
    elif name == "svhn":
        filename = f"{split}_32x32.mat"
        folder = _first_dir([root, root / "svhn", root / "SVHN"], lambda d: (d / filename).is_file())
        if folder is not None:
            return load_svhn_mat(folder / filename)
    elif name == "imagenet":
        folder = _first_dir([root / "val", root / "imagenet" / "val", root / "ImgNet" / "val", root],
                            lambda d: any(p.is_dir() and p.name.startswith("n") for p in d.iterdir()))
        if folder is not None:
            return ImageNetFolder(folder, resize_size, crop_size)
    raise _not_found(name, root)


__all__ = ["ImageArrayDataset", "ImageNetFolder", "DATASETS", "DatasetInfo", "CIFAR10_CLASSES",
           "ENV_DATA_ROOT", "SAMPLE_NAME", "canonical_dataset_name", "imagenet_wnids", "load_dataset",
           "load_sample", "resolve_data_root"]
