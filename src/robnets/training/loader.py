"""A device-resident, resumable, DDP-shardable batch loader for in-memory image datasets (airbench style).

The whole uint8 dataset is copied to the device once; every batch is an index gather on the device,
augmented there with whole-batch tensor ops (:mod:`robnets.training.augment`) and converted to float in
[0, 1] (never normalized). No worker processes, no per-sample Python work.

Determinism contract (the trainer and the DDP equivalence test rely on it):

* **Order.** Epoch ``e``'s order is ``torch.randperm(N)`` drawn from a CPU generator seeded with
  ``derive_seed(PERM_TAG, seed, e)`` (``arange(N)`` when ``shuffle=False``): it depends on ``(seed, epoch,
  N)`` only, not on the device, rank, world size or batch size.
* **Global batches.** With ``G = batch_size * world_size``, global batch ``k`` of epoch ``e`` is
  ``perm[k * G : (k + 1) * G]`` (the last one shorter when ``drop_last=False`` and ``G`` does not divide
  ``N``; with ``drop_last=True`` the tail ``N % G`` examples are skipped that epoch).
* **Shards.** Rank ``r`` gets the ``r``-th of ``torch.tensor_split(global_batch, world_size)``: for every
  full batch that is exactly ``global_batch[r * batch_size : (r + 1) * batch_size]``; a short last batch of
  ``g`` examples is split into contiguous parts whose sizes differ by at most one, lower ranks taking the
  larger ones (a rank may then get an empty batch when ``g < world_size``). Hence, step for step,
  ``torch.cat([rank_0_batch, ..., rank_{W-1}_batch])`` equals batch ``k`` of a ``world_size=1`` loader with
  ``batch_size = G`` (same seed) -- images and labels, bitwise, **with or without augmentation** (see next).
* **Augmentation.** For batch ``k`` of epoch ``e`` a generator on the loader's device is seeded with
  ``derive_seed(AUG_TAG, seed, e, k)`` and the crop/flip/cutout parameters are drawn for the whole *global*
  batch (``sample_augment_params``); each rank applies its own slice of them. The draws therefore depend on
  ``(seed, epoch, step)`` and the rank's position in the global batch (which is what makes the shards
  agree with the single-process run) and never on how many batches this process drew before, so resuming
  mid-epoch reproduces the remaining batches exactly. They do depend on the device *type*: CPU and CUDA
  generators produce different streams from one seed.
* **State.** ``epoch`` and ``step`` (index of the next batch to yield). Iterating yields batches
  ``step, step + 1, ..., len(self) - 1`` of ``epoch`` and advances ``step`` just before each yield, so
  :meth:`state_dict` taken while a batch is being used points at the following batch. When an iteration
  runs to the end the loader moves itself to ``(epoch + 1, 0)``; :meth:`set_epoch` sets both explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from ..data.arrays import ImageArrayDataset
from ..runtime import derive_seed
from .augment import apply_augment_params, sample_augment_params

__all__ = ["AUG_TAG", "PERM_TAG", "GpuBatchLoader", "derive_seed"]

PERM_TAG = 0x5045524D   # "PERM": the epoch permutation stream
AUG_TAG = 0x41554721    # "AUG!": the per-batch augmentation stream


def _resolve_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class GpuBatchLoader:
    """Batches of ``(float NCHW images in [0, 1], int64 labels)``, both on ``device``.

    Args:
        dataset: the examples; its uint8 NHWC images are moved to ``device`` once (stored there as a uint8
            NCHW copy, :attr:`images`), with the labels (:attr:`labels`).
        batch_size: examples per batch *per rank*.
        device: where data, gathers, augmentation and outputs live.
        shuffle: a fresh permutation every epoch (else the dataset order).
        drop_last: skip the incomplete last global batch (else yield it, split across ranks).
        augment: apply crop (``crop_padding``, 0 disables) → flip (``flip``) → cutout (``cutout_length``, 0
            disables); see :mod:`robnets.training.augment`.
        seed: non-negative integer; fixes order and augmentation together with the epoch and step.
        rank, world_size: this process's shard, see the module docstring for the exact split.
    """

    def __init__(self, dataset: ImageArrayDataset, batch_size: int, *, device: torch.device | str,
                 shuffle: bool = True, drop_last: bool = True, augment: bool = True, crop_padding: int = 4,
                 flip: bool = True, cutout_length: int = 0, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if int(world_size) != world_size or world_size < 1:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        if int(rank) != rank or not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size - 1}], got {rank!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if crop_padding < 0 or cutout_length < 0:
            raise ValueError(f"crop_padding and cutout_length must be >= 0, got {crop_padding}, {cutout_length}")
        self.device = _resolve_device(device)
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.augment = bool(augment)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.cutout_length = int(cutout_length)
        self.num_classes = dataset.num_classes
        # uint8 (N, C, H, W) and int64 (N,) on the device, moved once.
        self.images = dataset.images.to(self.device).permute(0, 3, 1, 2).contiguous()
        self.labels = dataset.labels.to(self.device, torch.int64)
        self._aug_generator = torch.Generator(device=self.device) if self.augment else None
        self._to_float = (torch.arange(256, dtype=torch.float32) / 255.0).to(self.device)
        self._perm_cache: tuple[int, torch.Tensor] | None = None
        self._epoch = 0
        self._step = 0

    # ------------------------------------------------------------------------------------------ sizes

    @property
    def num_examples(self) -> int:
        return self.images.shape[0]

    @property
    def global_batch_size(self) -> int:
        """``batch_size * world_size``: the examples one step consumes across all ranks."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        n, g = self.num_examples, self.global_batch_size
        return n // g if self.drop_last else math.ceil(n / g)

    # ------------------------------------------------------------------------------------------ state

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def step(self) -> int:
        """Index (within :attr:`epoch`) of the next batch iteration will yield."""
        return self._step

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        """Position the loader at batch ``step`` of ``epoch`` (call before each epoch, like DistributedSampler)."""
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        if int(step) != step or not 0 <= step <= len(self):
            raise ValueError(f"step must lie in [0, {len(self)}], got {step!r}")
        self._epoch, self._step = int(epoch), int(step)

    def state_dict(self) -> dict[str, Any]:
        """``epoch`` and ``step`` (next batch), plus the settings that determine the batch sequence."""
        return {"epoch": self._epoch, "step": self._step, "seed": self.seed, "batch_size": self.batch_size,
                "world_size": self.world_size, "num_examples": self.num_examples, "shuffle": self.shuffle,
                "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s position; raises ValueError when a recorded setting differs from this loader's
        (the saved position would then name different batches). The rank is not recorded, so every rank may
        load rank 0's state."""
        mine = self.state_dict()
        for key in ("seed", "batch_size", "world_size", "num_examples", "shuffle", "drop_last"):
            if key in state and state[key] != mine[key]:
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has {mine[key]!r}")
        self.set_epoch(state["epoch"], state["step"])

    # ------------------------------------------------------------------------------------------ batches

    def permutation(self, epoch: int | None = None) -> torch.Tensor:
        """Epoch ``epoch``'s example order (int64 on the device; computed on CPU, cached for the last epoch)."""
        epoch = self._epoch if epoch is None else int(epoch)
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            if self.shuffle:
                generator = torch.Generator(device="cpu")
                generator.manual_seed(derive_seed(PERM_TAG, self.seed, epoch))
                perm = torch.randperm(self.num_examples, generator=generator)
            else:
                perm = torch.arange(self.num_examples)
            self._perm_cache = (epoch, perm.to(self.device))
        return self._perm_cache[1]

    def _global_bounds(self, step: int) -> tuple[int, int]:
        if int(step) != step or not 0 <= step < len(self):
            raise IndexError(f"batch {step!r} out of range for {len(self)} batches per epoch")
        start = int(step) * self.global_batch_size
        return start, min(self.global_batch_size, self.num_examples - start)

    def _rank_bounds(self, global_size: int) -> tuple[int, int]:
        """(offset, length) of this rank's part of a global batch of ``global_size`` (tensor_split rule)."""
        base, extra = divmod(global_size, self.world_size)
        return self.rank * base + min(self.rank, extra), base + (1 if self.rank < extra else 0)

    def global_indices(self, step: int, epoch: int | None = None) -> torch.Tensor:
        """Dataset indices of global batch ``step`` (all ranks together, in rank order)."""
        start, size = self._global_bounds(step)
        return self.permutation(epoch)[start:start + size]

    def indices(self, step: int, epoch: int | None = None) -> torch.Tensor:
        """Dataset indices of this rank's batch ``step``."""
        offset, length = self._rank_bounds(self._global_bounds(step)[1])
        return self.global_indices(step, epoch)[offset:offset + length]

    def get_batch(self, step: int, epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's batch ``step`` of ``epoch`` (default: the current epoch), computed statelessly: the
        same call always returns the same tensors, whatever was drawn before."""
        epoch = self._epoch if epoch is None else int(epoch)
        _, global_size = self._global_bounds(step)
        offset, length = self._rank_bounds(global_size)
        index = self.global_indices(step, epoch)[offset:offset + length]
        images = self.images[index]
        labels = self.labels[index]
        if self.augment:
            generator = self._aug_generator
            generator.manual_seed(derive_seed(AUG_TAG, self.seed, epoch, step))
            params = sample_augment_params(global_size, images.shape[2], images.shape[3],
                                           crop_padding=self.crop_padding, flip=self.flip,
                                           cutout_length=self.cutout_length, generator=generator,
                                           device=self.device)
            images = apply_augment_params(images, params.narrow(offset, length))
        # a table lookup, not a division: CUDA divides by a scalar as a multiplication by its reciprocal, which
        # differs from the CPU's x / 255 in the last bit for some pixel values
        return torch.take(self._to_float, images.long()), labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, total = self._epoch, len(self)
        step = self._step
        while step < total:
            batch = self.get_batch(step, epoch)
            step += 1
            self._step = step
            yield batch
        if self._epoch == epoch and self._step == total:  # ran to the end, not repositioned meanwhile
            self._epoch, self._step = epoch + 1, 0

    def iter_from(self, step: int, epoch: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Position at batch ``step`` of ``epoch`` (default: the current epoch) and iterate from there."""
        self.set_epoch(self._epoch if epoch is None else epoch, step)
        return iter(self)

    def __repr__(self) -> str:
        return (f"GpuBatchLoader(n={self.num_examples}, batch_size={self.batch_size}, rank={self.rank}/"
                f"{self.world_size}, device={self.device}, shuffle={self.shuffle}, augment={self.augment}, "
                f"epoch={self._epoch}, step={self._step})")
