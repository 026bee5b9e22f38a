"""ImageNet-style folders ``<root>/val/<wnid>/*.JPEG``: resize 256, center-crop 224, classes by wnid.

The class index of a folder is the position of its wnid in the standard sorted list of the 1,000
ImageNet-1k wnids (shipped with the package), so a folder holding only some classes still gets the
indices a 1,000-way classifier expects.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import DataError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[tuple[str, str], ...]:
    """(wnid, short name) for the 1,000 ImageNet-1k classes, in class-index order."""
    text = resources.files("robnets.data").joinpath("assets/imagenet_wnids.txt").read_text()
    rows = [tuple(line.split(maxsplit=1)) for line in text.splitlines() if line.strip()]
    return tuple((r[0], r[1] if len(r) > 1 else "") for r in rows)


class ImageNetFolder(Dataset):
    """Images under ``folder/<wnid>/``; items are (float CHW in [0, 1], class index)."""

    def __init__(self, folder: Path, resize_size: int = 256, crop_size: int = 224) -> None:
        from torchvision import transforms

        index = {wnid: i for i, (wnid, _) in enumerate(imagenet_wnids())}
        self.samples: list[tuple[Path, int]] = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if sub.name not in index:
                raise DataError(f"{sub} is not named after an ImageNet-1k wnid (such as n01440764); "
                                f"expected {folder}/<wnid>/*.JPEG")
            self.samples += [(f, index[sub.name]) for f in sorted(sub.iterdir())
                             if f.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise DataError(f"no images in {folder}: expected {folder}/<wnid>/*.JPEG")
        self.num_classes = 1000
        self.transform = transforms.Compose([
            transforms.Resize(resize_size), transforms.CenterCrop(crop_size), transforms.ToTensor(),
        ])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:  # decoders raise their own error types for files they refuse (not only OSError): any is this file's
            with Image.open(path) as image:
                image = image.convert("RGB")
            return self.transform(image), label
        except Exception as exc:  # noqa: BLE001
            reason = " ".join(str(exc).split()) or "no detail"
            raise DataError(f"cannot decode image {path} ({type(exc).__name__}: {reason}); the file is corrupt or "
                            f"not an image: replace or remove it") from None
