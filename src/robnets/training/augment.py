"""Whole-batch data augmentation with tensor ops (airbench style), on whatever device the batch lives on.

Layout: every function takes and returns an NCHW batch ``(N, C, H, W)`` of any dtype. The ops are pure
selections plus zero fills, so they give bitwise the same result on a uint8 batch followed by
``.float().div_(255)`` as on the float batch: :class:`~robnets.training.loader.GpuBatchLoader` augments the
uint8 batch and converts afterwards. Values are never rescaled or normalized, so a float batch in [0, 1]
stays in [0, 1] (every output pixel is an input pixel or 0).

Randomness: all of it comes from the ``generator`` argument, a :class:`torch.Generator` on the batch's
device type (torch generators are per device; CPU and CUDA generators seeded alike draw different
numbers). ``generator=None`` falls back to torch's global RNG for that device. Each random function is split
into a ``sample_*`` half that draws the parameters and a ``*_with_*`` half that applies them; the random
function is exactly ``apply(images, sample(..., generator))``, so the drawn parameters can be inspected and
tested. Draw order (it fixes the stream for a given seed):

* :func:`random_crop`: ``dy`` (N) then ``dx`` (N), each ``randint(0, 2 * padding + 1)``;
* :func:`random_flip`: one ``randint(0, 2)`` per image, 1 = flip;
* :func:`cutout`: ``cy`` (N) ``randint(0, H)`` then ``cx`` (N) ``randint(0, W)``;
* :func:`augment_batch`: crop draws, then flip draws, then cutout draws (a disabled step draws nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "AugmentParams",
    "apply_augment_params",
    "augment_batch",
    "crop_with_offsets",
    "cutout",
    "cutout_bounds",
    "cutout_with_centers",
    "flip_with_mask",
    "random_crop",
    "random_flip",
    "sample_augment_params",
    "sample_crop_offsets",
    "sample_cutout_centers",
    "sample_flip_mask",
]


def _check_batch(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"expected an NCHW batch, got shape {tuple(images.shape)}")


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    """The device to draw on: ``device`` if given, else the generator's, else CPU; the two must agree."""
    if device is not None:
        device = torch.device(device)
        if generator is not None and generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device} but the batch is on {device}; torch "
                             f"generators are per device, pass torch.Generator(device={device.type!r})")
        return device
    return generator.device if generator is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------------- crop

def sample_crop_offsets(n: int, padding: int = 4, *, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image crop offsets ``(dy, dx)``, int64 ``(n,)`` each, uniform on ``[0, 2 * padding]``.

    ``dy`` is the top row and ``dx`` the left column of the crop window in the zero-padded image, as in
    torchvision's ``RandomCrop(size, padding)`` (``i = randint(0, h + 2p - size + 1)``).
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    device = _draw_device(generator, device)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    return dy, dx


def crop_with_offsets(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Zero-pad by ``padding`` on every side and crop an ``H x W`` window at ``(dy[i], dx[i])`` per image.

    Vectorized as one gather over index grids (no loop over images). Returns a contiguous NCHW tensor of
    the input's shape and dtype: ``out[i] = pad(images[i])[:, dy[i]:dy[i]+H, dx[i]:dx[i]+W]``.
    """
    _check_batch(images)
    n, _, h, w = images.shape
    if dy.shape != (n,) or dx.shape != (n,):
        raise ValueError(f"need one (dy, dx) per image: {n} images, offsets {tuple(dy.shape)}, {tuple(dx.shape)}")
    if padding == 0 or n == 0:
        return images.contiguous()
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))              # (N, C, H+2p, W+2p), zeros
    rows = dy.to(device)[:, None] + torch.arange(h, device=device)            # (N, H)
    cols = dx.to(device)[:, None] + torch.arange(w, device=device)            # (N, W)
    batch = torch.arange(n, device=device)[:, None, None]                     # (N, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]   # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_crop(images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """torchvision ``RandomCrop((H, W), padding=padding)`` with zero fill, an independent offset per image."""
    _check_batch(images)
    dy, dx = sample_crop_offsets(images.shape[0], padding, generator=generator, device=images.device)
    return crop_with_offsets(images, dy, dx, padding)


# ---------------------------------------------------------------------------------------------------- flip

def sample_flip_mask(n: int, *, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Bool ``(n,)``: True for the images to flip, each independently with probability 0.5."""
    device = _draw_device(generator, device)
    return torch.randint(0, 2, (n,), generator=generator, device=device).bool()


def flip_with_mask(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror (left-right, along W) the images where ``mask`` is True."""
    _check_batch(images)
    if mask.shape != (images.shape[0],):
        raise ValueError(f"need one flag per image: {images.shape[0]} images, mask {tuple(mask.shape)}")
    return torch.where(mask.to(images.device)[:, None, None, None], images.flip(3), images)


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """torchvision ``RandomHorizontalFlip(p=0.5)``, independently per image."""
    _check_batch(images)
    return flip_with_mask(images, sample_flip_mask(images.shape[0], generator=generator, device=images.device))


# -------------------------------------------------------------------------------------------------- cutout

def sample_cutout_centers(n: int, height: int, width: int, *, generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image square centres ``(cy, cx)``, int64 ``(n,)``, uniform pixels (``cy`` in [0, H), ``cx`` in [0, W))."""
    device = _draw_device(generator, device)
    cy = torch.randint(0, height, (n,), generator=generator, device=device)
    cx = torch.randint(0, width, (n,), generator=generator, device=device)
    return cy, cx


def cutout_bounds(cy: torch.Tensor, cx: torch.Tensor, length: int, height: int,
                  width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y1, y2, x1, x2)`` exactly as the original RobNets/DARTS ``Cutout``: ``y1 = clip(cy - length // 2,
    0, H)``, ``y2 = clip(cy + length // 2, 0, H)``, same for x; rows ``y1:y2`` and columns ``x1:x2`` are zeroed
    (so an odd ``length`` zeroes ``length - 1`` rows, like the original)."""
    half = length // 2
    return ((cy - half).clamp(0, height), (cy + half).clamp(0, height),
            (cx - half).clamp(0, width), (cx + half).clamp(0, width))


def cutout_with_centers(images: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, length: int = 16) -> torch.Tensor:
    """Zero, in every channel, the ``length x length`` square around ``(cy[i], cx[i])`` clipped at the borders."""
    _check_batch(images)
    n, _, h, w = images.shape
    if cy.shape != (n,) or cx.shape != (n,):
        raise ValueError(f"need one centre per image: {n} images, centres {tuple(cy.shape)}, {tuple(cx.shape)}")
    if length <= 0 or n == 0:
        return images
    device = images.device
    y1, y2, x1, x2 = cutout_bounds(cy.to(device), cx.to(device), length, h, w)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    in_y = (rows >= y1[:, None]) & (rows < y2[:, None])                        # (N, H)
    in_x = (cols >= x1[:, None]) & (cols < x2[:, None])                        # (N, W)
    mask = in_y[:, None, :, None] & in_x[:, None, None, :]                     # (N, 1, H, W)
    return images.masked_fill(mask, 0)


def cutout(images: torch.Tensor, length: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """The original RobNets ``Cutout(n_holes=1, length=length)``, one hole per image, on a whole batch."""
    _check_batch(images)
    n, _, h, w = images.shape
    cy, cx = sample_cutout_centers(n, h, w, generator=generator, device=images.device)
    return cutout_with_centers(images, cy, cx, length)


# -------------------------------------------------------------------------------------------------- pipeline

@dataclass(frozen=True)
class AugmentParams:
    """The random draws of one :func:`augment_batch` call (``None`` for a disabled step)."""

    crop_padding: int
    crop_dy: torch.Tensor | None
    crop_dx: torch.Tensor | None
    flip: torch.Tensor | None
    cutout_length: int
    cutout_cy: torch.Tensor | None
    cutout_cx: torch.Tensor | None

    def narrow(self, start: int, length: int) -> AugmentParams:
        """The parameters of images ``start:start+length`` (how a DDP rank takes its share of a global batch)."""
        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:start + length]
        return AugmentParams(self.crop_padding, cut(self.crop_dy), cut(self.crop_dx), cut(self.flip),
                             self.cutout_length, cut(self.cutout_cy), cut(self.cutout_cx))


def sample_augment_params(n: int, height: int, width: int, *, crop_padding: int = 4, flip: bool = True,
                          cutout_length: int = 0, generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> AugmentParams:
    """Draw crop offsets, flip flags and cutout centres for ``n`` images, in that order."""
    dy = dx = flips = cy = cx = None
    if crop_padding > 0:
        dy, dx = sample_crop_offsets(n, crop_padding, generator=generator, device=device)
    if flip:
        flips = sample_flip_mask(n, generator=generator, device=device)
    if cutout_length > 0:
        cy, cx = sample_cutout_centers(n, height, width, generator=generator, device=device)
    return AugmentParams(crop_padding, dy, dx, flips, cutout_length, cy, cx)


def apply_augment_params(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Crop, then flip, then cutout with the given draws."""
    _check_batch(images)
    if params.crop_dy is not None:
        images = crop_with_offsets(images, params.crop_dy, params.crop_dx, params.crop_padding)
    if params.flip is not None:
        images = flip_with_mask(images, params.flip)
    if params.cutout_cy is not None:
        images = cutout_with_centers(images, params.cutout_cy, params.cutout_cx, params.cutout_length)
    return images


def augment_batch(images: torch.Tensor, *, crop_padding: int = 4, flip: bool = True, cutout_length: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """RobNets' CIFAR training augmentation on a whole NCHW batch: random crop (zero padding
    ``crop_padding``; 0 disables) → horizontal flip (p = 0.5) → cutout (``cutout_length``; 0 disables).

    Same result as applying :func:`random_crop`, :func:`random_flip` and :func:`cutout` in turn with one
    generator. Returns a new tensor unless every step is disabled (then the input itself).
    """
    _check_batch(images)
    n, _, h, w = images.shape
    params = sample_augment_params(n, h, w, crop_padding=crop_padding, flip=flip, cutout_length=cutout_length,
                                   generator=generator, device=images.device)
    return apply_augment_params(images, params)
