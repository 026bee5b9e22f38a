"""In-memory image datasets: uint8 NHWC arrays in, float NCHW tensors in [0, 1] out (never normalized)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError


def integer_labels(labels: np.ndarray | torch.Tensor, where: str = "") -> np.ndarray:
    """Labels as a flat int64 array; refuses values that are not whole numbers instead of truncating them."""
    values = (labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)).reshape(-1)
    if values.dtype.kind not in "iuf":
        raise DataError(f"labels{where} must be integers, got {values.dtype}")
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            raise DataError(f"labels{where} must be integers, found {values[bad][0].item()!r}; class indices are "
                            f"never rounded")
    return values.astype(np.int64)


class ImageArrayDataset(Dataset):
    """Images held as one uint8 (N, H, W, C) tensor with int64 labels.

    Indexing returns ``(float CHW image in [0, 1], label)``; :meth:`batch` slices many at once without
    per-sample Python work, which is what evaluation uses.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                 num_classes: int, name: str = "") -> None:
        where = f" in {name}" if name else ""
        images = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        labels = torch.from_numpy(integer_labels(labels, where))
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] not in (1, 3):
            raise DataError(f"images{where} must be uint8 with shape (N, H, W, 3), got {images.dtype} "
                            f"{tuple(images.shape)}")
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{images.shape[0]} images but {labels.shape[0]} labels{where}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"labels{where} must lie in [0, {num_classes - 1}], found "
                            f"{labels.min().item()}..{labels.max().item()}")
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].permute(2, 0, 1).float().div_(255.0)
        return image, int(self.labels[index])

    def digest(self) -> str:
        """sha256 of the images and labels: what a resumable run records about the data it used."""
        import hashlib

        digest = hashlib.sha256()
        digest.update(self.images.contiguous().numpy().tobytes())
        digest.update(self.labels.to(torch.int64).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``start:stop`` as a float (B, C, H, W) batch in [0, 1] and their labels."""
        images = self.images[start:stop].permute(0, 3, 1, 2).float().div_(255.0)
        return images.contiguous(), self.labels[start:stop].clone()

    def hold_out(self, n: int) -> tuple[ImageArrayDataset, ImageArrayDataset]:
        """(the rest, the last ``n`` examples): the training split and a held-out validation slice."""
        k = len(self) - n
        rest = ImageArrayDataset(self.images[:k], self.labels[:k], num_classes=self.num_classes, name=self.name)
        held = ImageArrayDataset(self.images[k:], self.labels[k:], num_classes=self.num_classes,
                                 name="validation (held out)")
        return rest, held

    def select(self, indices: list[int] | np.ndarray | torch.Tensor) -> ImageArrayDataset:
        """The examples at ``indices``, in that order (a fixed random sample of a test set, say)."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if index.numel() and (index.min() < 0 or index.max() >= len(self)):
            raise DataError(f"indices must lie in [0, {len(self) - 1}] for {self.name or 'this dataset'}, got "
                            f"{index.min().item()}..{index.max().item()}")
        return ImageArrayDataset(self.images[index], self.labels[index], num_classes=self.num_classes, name=self.name)

    def subset(self, n: int) -> ImageArrayDataset:
        """The first ``n`` examples (all when n exceeds the size)."""
        return ImageArrayDataset(self.images[:n], self.labels[:n], num_classes=self.num_classes, name=self.name)
