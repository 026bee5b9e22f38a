"""SVHN from the official ``train_32x32.mat`` / ``test_32x32.mat`` files (label 10 means digit 0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .arrays import ImageArrayDataset, integer_labels


def load_svhn_mat(path: Path) -> ImageArrayDataset:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); is it a complete SVHN .mat "
                        f"file? re-download it (--download)") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} must hold 'X' (32 x 32 x 3 x N uint8) and 'y' (N x 1); found "
                        f"{sorted(k for k in mat if not k.startswith('__'))}")
    images = np.asarray(mat["X"])
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: 'X' should have shape (32, 32, 3, N), got {images.shape}")
    labels = integer_labels(mat["y"], f" in {path}").copy()
    labels[labels == 10] = 0  # SVHN stores the digit 0 as class 10
    return ImageArrayDataset(images.transpose(3, 0, 1, 2).astype(np.uint8), labels, num_classes=10,
                             name=f"svhn ({path})")
