"""Batch augmentation (robnets.training.augment) and the device-resident loader (robnets.training.loader)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from robnets.data.arrays import ImageArrayDataset
from robnets.training.augment import (augment_batch, crop_with_offsets, cutout, cutout_with_centers, random_crop,
                                      random_flip, sample_crop_offsets, sample_cutout_centers,
                                      sample_flip_mask)
from robnets.training.loader import GpuBatchLoader


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only add wake-up latency (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _float_batch(n: int = 64, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Float NCHW in (0, 1] with no zeros, so zero fill is recognisable."""
    u8 = torch.randint(1, 256, (n, c, h, w), generator=_gen(seed), dtype=torch.uint8)
    return u8.float().div_(255.0)


def _dataset(n: int = 103, h: int = 32, w: int = 32, seed: int = 0) -> ImageArrayDataset:
    """Random uint8 images whose first two pixels encode the example index; label = index % 10."""
    images = torch.randint(0, 256, (n, h, w, 3), generator=_gen(seed), dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    return ImageArrayDataset(images, torch.arange(n) % 10, num_classes=10, name="synthetic")


def _collect(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


# ---------------------------------------------------------------------------------------------- augment

def test_random_crop_matches_torchvision_pad_then_crop_at_the_same_offsets():
    images = _float_batch(48)
    dy, dx = sample_crop_offsets(48, 4, generator=_gen(3))
    out = random_crop(images, 4, generator=_gen(3))           # same seed -> same offsets
    assert out.shape == images.shape and out.dtype == images.dtype and out.is_contiguous()
    for i in range(48):
        ref = TF.crop(TF.pad(images[i], [4], fill=0), int(dy[i]), int(dx[i]), 32, 32)
        assert torch.equal(out[i], ref)
    assert torch.equal(crop_with_offsets(images, dy, dx, 4), out)
    # offsets are independent per image and cover [0, 2 * padding]
    dy, dx = sample_crop_offsets(4000, 4, generator=_gen(4))
    assert set(dy.tolist()) == set(range(9)) == set(dx.tolist())
    assert (dy != dx).any()


def test_crop_works_on_uint8_and_equals_float_path():
    u8 = torch.randint(0, 256, (16, 3, 32, 32), generator=_gen(1), dtype=torch.uint8)
    a = random_crop(u8, 4, _gen(9)).float().div_(255.0)
    b = random_crop(u8.float().div_(255.0), 4, _gen(9))
    assert torch.equal(a, b)


def test_augmented_values_stay_in_unit_interval_and_come_from_the_image_or_zero():
    images = _float_batch(32)
    out = augment_batch(images, crop_padding=4, flip=True, cutout_length=16, generator=_gen(0))
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    for i in range(32):
        allowed = torch.cat([images[i].flatten(), torch.zeros(1)])
        assert torch.isin(out[i].flatten(), allowed).all()
    assert (out == 0).any()


def test_random_flip_flips_exactly_the_sampled_images_at_rate_one_half():
    images = _float_batch(64)
    mask = sample_flip_mask(64, generator=_gen(5))
    out = random_flip(images, _gen(5))
    for i in range(64):
        assert torch.equal(out[i], images[i].flip(-1) if mask[i] else images[i])
    rate = sample_flip_mask(20000, generator=_gen(6)).float().mean().item()
    assert 0.48 < rate < 0.52


def _reference_cutout(image: torch.Tensor, cy: int, cx: int, length: int) -> torch.Tensor:
    """The original RobNets/DARTS Cutout (n_holes=1) with the centre given instead of drawn."""
    h, w = image.shape[1], image.shape[2]
    mask = np.ones((h, w), np.float32)
    y1 = np.clip(cy - length // 2, 0, h)
    y2 = np.clip(cy + length // 2, 0, h)
    x1 = np.clip(cx - length // 2, 0, w)
    x2 = np.clip(cx + length // 2, 0, w)
    mask[y1:y2, x1:x2] = 0.0
    return image * torch.from_numpy(mask).expand_as(image)


def test_cutout_square_matches_the_original_formula_including_clipping():
    images = _float_batch(40)
    cy, cx = sample_cutout_centers(40, 32, 32, generator=_gen(7))
    out = cutout(images, 16, _gen(7))
    for i in range(40):
        assert torch.equal(out[i], _reference_cutout(images[i], int(cy[i]), int(cx[i]), 16))
    # explicit centres: interior (full 16x16), corners and edges (clipped), odd length (length - 1 rows)
    ones = torch.ones(6, 3, 32, 32)
    cy = torch.tensor([16, 0, 31, 8, 3, 20])
    cx = torch.tensor([16, 0, 31, 8, 30, 5])
    out = cutout_with_centers(ones, cy, cx, 16)
    zeros = (out == 0).sum(dim=(1, 2, 3)).tolist()
    assert zeros == [3 * 16 * 16, 3 * 8 * 8, 3 * 9 * 9, 3 * 16 * 16, 3 * 11 * 10, 3 * 16 * 13]
    assert torch.equal(out[1, :, :8, :8], torch.zeros(3, 8, 8))
    for i in range(6):
        assert torch.equal(out[i], _reference_cutout(ones[i], int(cy[i]), int(cx[i]), 16))
    odd = cutout_with_centers(ones[:1], cy[:1], cx[:1], 5)
    assert torch.equal(odd[0], _reference_cutout(ones[0], 16, 16, 5)) and (odd == 0).sum() == 3 * 4 * 4
    assert torch.equal(cutout_with_centers(images, cy.new_zeros(40), cx.new_zeros(40), 0), images)


def test_augment_batch_is_crop_then_flip_then_cutout_and_deterministic():
    images = _float_batch(32)
    g = _gen(11)
    expected = cutout(random_flip(random_crop(images, 4, g), g), 16, g)
    out = augment_batch(images, crop_padding=4, flip=True, cutout_length=16, generator=_gen(11))
    assert torch.equal(out, expected)
    again = augment_batch(images, crop_padding=4, flip=True, cutout_length=16, generator=_gen(11))
    other = augment_batch(images, crop_padding=4, flip=True, cutout_length=16, generator=_gen(12))
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert augment_batch(images, crop_padding=0, flip=False, cutout_length=0, generator=_gen(1)) is images


def test_generator_on_another_device_type_is_refused():
    with pytest.raises(ValueError, match="per device"):
        sample_crop_offsets(4, 4, generator=_gen(0), device="meta")


# ----------------------------------------------------------------------------------------------- loader

def _ids(images: torch.Tensor) -> list[int]:
    """Example indices recovered from the first two pixels of un-augmented float images."""
    px = (images[:, :2, 0, 0] * 255).round().long()
    return (px[:, 0] + 256 * px[:, 1]).tolist()


def test_len_with_and_without_drop_last():
    ds = _dataset(103)
    assert len(GpuBatchLoader(ds, 10, device="cpu")) == 10
    assert len(GpuBatchLoader(ds, 10, device="cpu", drop_last=False)) == 11
    assert len(GpuBatchLoader(ds, 10, device="cpu", world_size=2, rank=1)) == 5
    assert len(GpuBatchLoader(ds, 10, device="cpu", world_size=2, rank=1, drop_last=False)) == 6
    assert len(GpuBatchLoader(ds, 103, device="cpu")) == 1
    assert len(GpuBatchLoader(ds, 104, device="cpu")) == 0
    batches = _collect(GpuBatchLoader(ds, 10, device="cpu", drop_last=False, augment=False))
    assert [len(y) for _, y in batches] == [10] * 10 + [3]


def test_every_example_exactly_once_per_epoch_and_a_new_order_each_epoch():
    ds = _dataset(103)
    loader = GpuBatchLoader(ds, 16, device="cpu", drop_last=False, augment=False, seed=1)
    orders = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        ids, labels = [], []
        for x, y in loader:
            assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64
            assert 0 <= x.min() and x.max() <= 1
            ids += _ids(x)
            labels += y.tolist()
        assert sorted(ids) == list(range(103))
        assert labels == [i % 10 for i in ids]
        assert ids == loader.permutation(epoch).tolist()
        orders.append(ids)
    assert orders[0] != orders[1] != orders[2]
    same = GpuBatchLoader(ds, 7, device="cpu", augment=False, seed=1)   # order independent of batch size
    assert same.permutation(1).tolist() == orders[1]
    assert GpuBatchLoader(ds, 16, device="cpu", seed=2).permutation(1).tolist() != orders[1]


def test_unshuffled_unaugmented_batches_equal_dataset_batches():
    ds = _dataset(50)
    loader = GpuBatchLoader(ds, 16, device="cpu", shuffle=False, augment=False, drop_last=False)
    for k, (x, y) in enumerate(loader):
        ref_x, ref_y = ds.batch(16 * k, 16 * (k + 1))
        assert torch.equal(x, ref_x) and torch.equal(y, ref_y) and x.is_contiguous()


def test_augmented_loader_is_deterministic_and_seed_dependent():
    ds = _dataset(64)
    kw = dict(device="cpu", cutout_length=16)
    a = _collect(GpuBatchLoader(ds, 16, seed=3, **kw))
    b = _collect(GpuBatchLoader(ds, 16, seed=3, **kw))
    c = _collect(GpuBatchLoader(ds, 16, seed=4, **kw))
    assert _same(a, b) and not _same(a, c)
    plain = _collect(GpuBatchLoader(ds, 16, seed=3, device="cpu", augment=False))
    assert [y.tolist() for _, y in a] == [y.tolist() for _, y in plain]
    assert not all(torch.equal(xa, xp) for (xa, _), (xp, _) in zip(a, plain))
    for x, _ in a:
        assert 0 <= x.min() and x.max() <= 1


def test_resume_mid_epoch_gives_the_same_remaining_batches():
    ds = _dataset(100)
    kw = dict(device="cpu", cutout_length=16, seed=5, drop_last=False)
    full = GpuBatchLoader(ds, 8, **kw)
    full.set_epoch(2)
    uninterrupted = _collect(full)
    assert full.epoch == 3 and full.step == 0          # ran to the end: advanced to the next epoch

    first = GpuBatchLoader(ds, 8, **kw)
    first.set_epoch(2)
    it = iter(first)
    head = [next(it) for _ in range(5)]
    state = first.state_dict()
    assert state["epoch"] == 2 and state["step"] == 5
    assert _same(head, uninterrupted[:5])

    resumed = GpuBatchLoader(ds, 8, **kw)
    resumed.load_state_dict(state)
    assert _same(_collect(resumed), uninterrupted[5:])
    assert resumed.state_dict()["epoch"] == 3 and resumed.step == 0
    # iter_from / get_batch give the same batches statelessly
    other = GpuBatchLoader(ds, 8, **kw)
    assert _same(list(other.iter_from(9, epoch=2)), uninterrupted[9:])
    assert _same([other.get_batch(3, epoch=2)], [uninterrupted[3]])
    with pytest.raises(ValueError, match="batch_size"):
        GpuBatchLoader(ds, 4, **kw).load_state_dict(state)


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("drop_last", [True, False])
def test_world_size_two_shards_union_to_the_single_process_global_batch(augment, drop_last):
    ds = _dataset(103)
    kw = dict(device="cpu", augment=augment, drop_last=drop_last, cutout_length=16, seed=7)
    single = GpuBatchLoader(ds, 20, **kw)
    ranks = [GpuBatchLoader(ds, 10, rank=r, world_size=2, **kw) for r in range(2)]
    for loader in (single, *ranks):
        loader.set_epoch(1)
    assert len(single) == len(ranks[0]) == len(ranks[1]) == (5 if drop_last else 6)
    seen = []
    for (xg, yg), (x0, y0), (x1, y1) in zip(single, *ranks):
        assert torch.equal(torch.cat([x0, x1]), xg) and torch.equal(torch.cat([y0, y1]), yg)
        assert len(y0) == len(y1) or len(y0) == len(y1) + 1
        idx0, idx1 = set(ranks[0].indices(ranks[0].step - 1).tolist()), set(ranks[1].indices(ranks[1].step - 1).tolist())
        assert not idx0 & idx1
        seen += sorted(idx0 | idx1)
    assert len(seen) == len(set(seen)) == (100 if drop_last else 103)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_loader_same_order_as_cpu_and_reproducible():
    ds = _dataset(103)
    kw = dict(cutout_length=16, seed=3, drop_last=False)
    cpu_plain = _collect(GpuBatchLoader(ds, 16, device="cpu", augment=False, **kw))
    gpu_plain = _collect(GpuBatchLoader(ds, 16, device="cuda", augment=False, **kw))
    assert _same(cpu_plain, [(x.cpu(), y.cpu()) for x, y in gpu_plain])
    a = _collect(GpuBatchLoader(ds, 16, device="cuda", **kw))
    assert all(x.device.type == "cuda" and y.device.type == "cuda" for x, y in a)
    assert all(0 <= x.min() and x.max() <= 1 for x, _ in a)
    assert _same(a, _collect(GpuBatchLoader(ds, 16, device="cuda", **kw)))
    resumed = GpuBatchLoader(ds, 16, device="cuda", **kw)
    assert _same(list(resumed.iter_from(4)), a[4:])
    ranks = [GpuBatchLoader(ds, 8, device="cuda", rank=r, world_size=2, **kw) for r in range(2)]
    for (xg, yg), (x0, y0), (x1, y1) in zip(a, *ranks):
        assert torch.equal(torch.cat([x0, x1]), xg) and torch.equal(torch.cat([y0, y1]), yg)
