"""Dataset loading: CIFAR-10 (sharded/single npz, official python folder), CIFAR-100, SVHN, ImageNet folders,
the embedded CIFAR-10 sample, data-root resolution and the errors users see.

Real data comes from ../shared (tests skip when it is absent); formats that are not available there are
written by the tests themselves in the official layouts."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import robnets.data as rdata
from robnets.data import load_dataset, resolve_data_root
from robnets.errors import DataError

TEST_SHA256 = "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04"
TRAIN_SHA256 = "47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a"


def _sha(images: torch.Tensor) -> str:
    return hashlib.sha256(images.numpy().tobytes()).hexdigest()


_FIRST_40: dict[Path, tuple[np.ndarray, np.ndarray]] = {}


@pytest.fixture
def shared_test_arrays(cifar10_dir) -> tuple[np.ndarray, np.ndarray]:
    """The first 40 images and labels of the shared CIFAR-10 test set (skips when ../shared is absent)."""
    if cifar10_dir not in _FIRST_40:
        with np.load(cifar10_dir / "test.npz") as arrays:
            _FIRST_40[cifar10_dir] = arrays["images"][:40].copy(), arrays["labels"][:40].copy()
    return _FIRST_40[cifar10_dir]


def _to_rows(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> the official (N, 3072) rows: the R plane, then G, then B, each row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _batch(images: np.ndarray, labels: np.ndarray, label_key: bytes = b"labels") -> dict:
    return {b"batch_label": b"testing batch 1 of 1", label_key: [int(v) for v in labels],
            b"data": _to_rows(images), b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}


def _dump(obj, path: Path, protocol: int = 2) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)


class _Py2StylePickler(pickle._Pickler):
    """Writes pickles the way Python 2's cPickle wrote the official CIFAR files: every str/bytes as a
    Python 2 ``str`` opcode and numpy's multiarray module under its old name ``numpy.core.multiarray``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):  # noqa: ANN001, ANN202
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def _save_old_global(self, obj, name=None):  # noqa: ANN001, ANN202
        module = obj.__module__.replace("numpy._core.", "numpy.core.")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str
    for _kind in (type, types.FunctionType, types.BuiltinFunctionType):
        dispatch[_kind] = _save_old_global


# --------------------------------------------------------------------------------- CIFAR-10 (shared npz)
def test_cifar10_test_split_from_shards_is_pixel_exact(cifar10_dir):
    dataset = load_dataset("cifar10", "test", cifar10_dir)
    assert len(dataset) == 10_000 and dataset.num_classes == 10
    assert dataset.images.dtype == torch.uint8 and tuple(dataset.images.shape) == (10_000, 32, 32, 3)
    assert _sha(dataset.images) == TEST_SHA256
    assert dataset.labels.dtype == torch.int64
    assert torch.bincount(dataset.labels, minlength=10).tolist() == [1000] * 10
    # the well-known per-channel test-set means (pixels are not normalized)
    means = dataset.images.double().mean(dim=(0, 1, 2)) / 255
    assert means.tolist() == pytest.approx([0.4942, 0.4851, 0.4504], abs=1e-4)

    images, labels = dataset.batch(10, 42)
    assert images.dtype == torch.float32 and tuple(images.shape) == (32, 3, 32, 32)
    assert images.is_contiguous()
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    expected = dataset.images[10:42].permute(0, 3, 1, 2).float() / 255
    assert torch.equal(images, expected)
    assert torch.equal(labels, dataset.labels[10:42])
    image, label = dataset[7]
    assert torch.equal(image, dataset.images[7].permute(2, 0, 1).float() / 255) and label == int(dataset.labels[7])
    # batch() hands out copies: changing them must not change the dataset
    labels[0] = 99
    images.zero_()
    assert int(dataset.labels[10]) != 99 and int(dataset.images[10].sum()) > 0


def test_cifar10_train_split_concatenates_shards_in_official_order(cifar10_dir):
    dataset = load_dataset("cifar10", "train", cifar10_dir)
    assert len(dataset) == 50_000
    assert _sha(dataset.images) == TRAIN_SHA256
    assert torch.bincount(dataset.labels, minlength=10).tolist() == [5000] * 10
    with np.load(cifar10_dir / "train_1.npz") as shard:  # images 21,000..41,999
        assert np.array_equal(dataset.images[21_000].numpy(), shard["images"][0])
        assert np.array_equal(dataset.labels[21_000:22_000].numpy(), shard["labels"][:1000])


def test_cifar10_root_may_be_the_parent_folder(cifar10_dir, tmp_path, monkeypatch):
    (tmp_path / "cifar10").symlink_to(cifar10_dir, target_is_directory=True)
    dataset = load_dataset("cifar10", "test", tmp_path)
    assert len(dataset) == 10_000 and _sha(dataset.images) == TEST_SHA256
    # with no root given, $ROBNETS_DATA names the parent folder
    monkeypatch.setenv("ROBNETS_DATA", str(tmp_path))
    assert _sha(load_dataset("CIFAR-10", "test").images) == TEST_SHA256


# --------------------------------------------------------------------------- CIFAR-10 official python folder
def _write_official_cifar10(folder: Path, images: np.ndarray, labels: np.ndarray, dump=_dump) -> None:
    """data_batch_1..5 get images 0..29 (6 each, in order), test_batch gets images 30..39."""
    folder.mkdir(parents=True)
    for i in range(5):
        part = slice(6 * i, 6 * i + 6)
        dump(_batch(images[part], labels[part]), folder / f"data_batch_{i + 1}")
    dump(_batch(images[30:40], labels[30:40]), folder / "test_batch")
    dump({b"num_cases_per_batch": 6, b"label_names": [b"airplane"], b"num_vis": 3072}, folder / "batches.meta")


def test_cifar10_official_folder_reproduces_pixels_and_labels(shared_test_arrays, tmp_path):
    images, labels = shared_test_arrays
    _write_official_cifar10(tmp_path / "cifar-10-batches-py", images, labels)

    test = load_dataset("cifar10", "test", tmp_path)
    assert len(test) == 10
    assert np.array_equal(test.images.numpy(), images[30:40])
    assert np.array_equal(test.labels.numpy(), labels[30:40])
    train = load_dataset("cifar10", "train", tmp_path)
    assert np.array_equal(train.images.numpy(), images[:30])  # data_batch_1..5 in order
    assert np.array_equal(train.labels.numpy(), labels[:30])
    # root may also be the batches folder itself
    same = load_dataset("cifar10", "test", tmp_path / "cifar-10-batches-py")
    assert torch.equal(same.images, test.images)


def test_cifar10_official_folder_written_by_python2_loads(shared_test_arrays, tmp_path):
    """The files from the official tarball were written by Python 2's cPickle (str opcodes, numpy.core)."""
    images, labels = shared_test_arrays

    def dump_py2(obj, path: Path) -> None:
        buffer = io.BytesIO()
        _Py2StylePickler(buffer, protocol=2).dump(obj)
        assert b"_codecs" not in buffer.getvalue() and b"numpy._core" not in buffer.getvalue()
        assert (b"numpy.core.multiarray\n_reconstruct" in buffer.getvalue()) == (b"data" in obj)
        path.write_bytes(buffer.getvalue())

    _write_official_cifar10(tmp_path / "cifar-10-batches-py", images, labels, dump=dump_py2)
    train = load_dataset("cifar10", "train", tmp_path)
    assert np.array_equal(train.images.numpy(), images[:30])
    assert np.array_equal(train.labels.numpy(), labels[:30])


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (self.command,))


@pytest.mark.parametrize("where", ["top", "nested"])
def test_cifar10_pickle_with_forbidden_global_is_refused_without_running_it(tmp_path, where):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    exploit = _Exploit(f"touch {marker}")
    payload = exploit if where == "top" else {b"data": np.zeros((1, 3072), np.uint8), b"labels": [exploit]}
    _dump(payload, folder / "test_batch")
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "test", tmp_path)
    assert "test_batch" in str(info.value) and "system" in str(info.value)
    assert not marker.exists()


def test_cifar10_official_folder_problems_raise_data_error(shared_test_arrays, tmp_path):
    images, labels = shared_test_arrays
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _dump(_batch(images[:4], labels[:4]), folder / "test_batch")
    with pytest.raises(DataError, match="data_batch_1"):  # a train batch is missing
        load_dataset("cifar10", "train", tmp_path)
    full = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("cifar10", "test", tmp_path)
    _dump({b"data": _to_rows(images[:4])}, folder / "test_batch")  # no labels
    with pytest.raises(DataError, match="labels"):
        load_dataset("cifar10", "test", tmp_path)


# ------------------------------------------------------------------------------------------ npz layouts
def _write_npz(path: Path, images: np.ndarray, labels: np.ndarray, **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels, **extra)


def _synthetic(n: int, seed: int = 0, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, classes, size=n).astype(np.int64))


def test_npz_single_file_layout(tmp_path):
    train_images, train_labels = _synthetic(12, seed=1)
    test_images, test_labels = _synthetic(5, seed=2)
    _write_npz(tmp_path / "cifar10" / "train.npz", train_images, train_labels)
    _write_npz(tmp_path / "cifar10" / "test.npz", test_images, test_labels)
    train = load_dataset("cifar10", "train", tmp_path)
    test = load_dataset("cifar10", "test", tmp_path / "cifar10")
    assert np.array_equal(train.images.numpy(), train_images) and np.array_equal(train.labels.numpy(), train_labels)
    assert np.array_equal(test.images.numpy(), test_images) and np.array_equal(test.labels.numpy(), test_labels)


def test_npz_shards_are_concatenated_by_number_not_by_name(tmp_path):
    images, labels = _synthetic(33, seed=3)
    bounds = [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33]  # 11 shards: train_10 sorts before train_2 by name
    for i in range(11):
        _write_npz(tmp_path / f"train_{i}.npz", images[bounds[i]:bounds[i + 1]], labels[bounds[i]:bounds[i + 1]])
    dataset = load_dataset("cifar10", "train", tmp_path)
    assert np.array_equal(dataset.images.numpy(), images) and np.array_equal(dataset.labels.numpy(), labels)


def test_npz_missing_shard_is_named(tmp_path):
    images, labels = _synthetic(4)
    _write_npz(tmp_path / "cifar10" / "train_0.npz", images, labels)
    _write_npz(tmp_path / "cifar10" / "train_2.npz", images, labels)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "train", tmp_path)
    message = str(info.value)
    assert "missing" in message and "train_2.npz" in message and "0..1" in message


def test_npz_single_file_and_shards_together_is_ambiguous(tmp_path):
    images, labels = _synthetic(4)
    _write_npz(tmp_path / "test.npz", images, labels)
    _write_npz(tmp_path / "test_0.npz", images, labels)
    with pytest.raises(DataError, match="keep one layout"):
        load_dataset("cifar10", "test", tmp_path)


def test_npz_corrupt_or_malformed_raise_data_error(tmp_path):
    images, labels = _synthetic(6)
    path = tmp_path / "test.npz"
    _write_npz(path, images, labels)
    full = path.read_bytes()
    path.write_bytes(full[: len(full) - 200])  # truncated download
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("cifar10", "test", tmp_path)

    np.savez(path, images=images)  # no labels
    with pytest.raises(DataError, match="'labels'"):
        load_dataset("cifar10", "test", tmp_path)

    _write_npz(path, images, np.array([0, 1, 2, 10, 4, 5]))  # label 10 in a 10-class set
    with pytest.raises(DataError, match=r"\[0, 9\].*10"):
        load_dataset("cifar10", "test", tmp_path)

    _write_npz(path, images, np.array([0, 1, -1, 3, 4, 5]))
    with pytest.raises(DataError, match="labels"):
        load_dataset("cifar10", "test", tmp_path)

    _write_npz(path, images, labels[:5])  # one label short
    with pytest.raises(DataError, match="6 images but 5 labels"):
        load_dataset("cifar10", "test", tmp_path)

    _write_npz(path, images.transpose(0, 3, 1, 2).copy(), labels)  # NCHW instead of NHWC
    with pytest.raises(DataError, match="uint8"):
        load_dataset("cifar10", "test", tmp_path)

    _write_npz(path, images.astype(np.float32) / 255, labels)  # floats instead of uint8
    with pytest.raises(DataError, match="uint8"):
        load_dataset("cifar10", "test", tmp_path)

    np.savez(path, images=np.array([{"x": 1}], dtype=object), labels=labels)  # pickled objects: never loaded
    with pytest.raises(DataError):
        load_dataset("cifar10", "test", tmp_path)


# ------------------------------------------------------------------------------------------------ CIFAR-100
def test_cifar100_official_folder(tmp_path):
    train_images, train_labels = _synthetic(12, seed=4, classes=100)
    test_images, _ = _synthetic(6, seed=5)
    test_labels = np.array([0, 99, 50, 7, 98, 1])
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        batch = _batch(images, labels, label_key=b"fine_labels")
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
        _dump(batch, folder / name)
    train = load_dataset("cifar100", "train", tmp_path)
    test = load_dataset("CIFAR-100", "test", folder)
    assert train.num_classes == 100 and test.num_classes == 100
    assert np.array_equal(train.images.numpy(), train_images) and np.array_equal(train.labels.numpy(), train_labels)
    assert np.array_equal(test.images.numpy(), test_images)
    assert test.labels.tolist() == [0, 99, 50, 7, 98, 1]  # fine labels, not coarse ones
    # a CIFAR-10 batch (b'labels') put where CIFAR-100 is expected is named as the wrong file
    _dump(_batch(test_images, test_labels % 10), folder / "test")
    with pytest.raises(DataError, match="fine_labels"):
        load_dataset("cifar100", "test", tmp_path)


# ------------------------------------------------------------------------------------------------ SVHN
def _write_svhn(path: Path, images: np.ndarray, digits: np.ndarray) -> None:
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)  # SVHN stores digit 0 as 10
    scipy.io.savemat(str(path), {"X": np.ascontiguousarray(images.transpose(1, 2, 3, 0)), "y": y})


def test_svhn_mat_maps_label_10_to_digit_0_and_keeps_pixels(tmp_path):
    images, _ = _synthetic(11, seed=6)
    digits = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0])
    _write_svhn(tmp_path / "test_32x32.mat", images, digits)
    dataset = load_dataset("svhn", "test", tmp_path)
    assert dataset.num_classes == 10 and len(dataset) == 11
    assert dataset.images.dtype == torch.uint8
    assert np.array_equal(dataset.images.numpy(), images)
    assert dataset.labels.tolist() == digits.tolist()
    image, label = dataset[0]
    assert label == 0 and torch.equal(image, torch.from_numpy(images[0]).permute(2, 0, 1).float() / 255)


def test_svhn_subfolder_layout_and_split_choice(tmp_path):
    train_images, _ = _synthetic(4, seed=7)
    test_images, _ = _synthetic(3, seed=8)
    _write_svhn(tmp_path / "svhn" / "train_32x32.mat", train_images, np.array([1, 2, 3, 4]))
    _write_svhn(tmp_path / "svhn" / "test_32x32.mat", test_images, np.array([5, 0, 9]))
    train = load_dataset("SVHN", "train", tmp_path)
    test = load_dataset("svhn", "test", tmp_path)
    assert np.array_equal(train.images.numpy(), train_images) and train.labels.tolist() == [1, 2, 3, 4]
    assert np.array_equal(test.images.numpy(), test_images) and test.labels.tolist() == [5, 0, 9]


def test_svhn_corrupt_or_wrong_mat_raises_data_error(tmp_path):
    path = tmp_path / "svhn" / "test_32x32.mat"
    images, _ = _synthetic(5, seed=9)
    _write_svhn(path, images, np.arange(5))
    full = path.read_bytes()
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="test_32x32.mat"):
        load_dataset("svhn", "test", tmp_path)
    path.write_bytes(b"this is not a MATLAB file at all" * 10)
    with pytest.raises(DataError, match="test_32x32.mat"):
        load_dataset("svhn", "test", tmp_path)

    import scipy.io

    scipy.io.savemat(str(path), {"images": images})  # no X / y
    with pytest.raises(DataError, match="'X'"):
        load_dataset("svhn", "test", tmp_path)
    scipy.io.savemat(str(path), {"X": images, "y": np.ones((5, 1))})  # NHWC instead of HWCN
    with pytest.raises(DataError, match=r"\(32, 32, 3, N\)"):
        load_dataset("svhn", "test", tmp_path)


# ------------------------------------------------------------------------------------------------ ImageNet
def test_imagenet_sample_folder(imagenet_sample_dir):
    from PIL import Image
    from torchvision import transforms

    root = imagenet_sample_dir.parent
    dataset = load_dataset("imagenet", "val", root)
    assert len(dataset) == 100 and dataset.num_classes == 1000
    lines = (root / "wnids.txt").read_text().splitlines()
    index = {line.split()[0]: i for i, line in enumerate(lines)}
    for path, label in dataset.samples:
        assert label == index[path.parent.name]
        assert label % 10 == 0  # the sample holds every 10th class
    assert sorted({label for _, label in dataset.samples}) == list(range(0, 1000, 10))

    for i in (0, 57):
        image, label = dataset[i]
        assert image.dtype == torch.float32 and tuple(image.shape) == (3, 224, 224)
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0 and float(image.std()) > 0.01
        path = dataset.samples[i][0]
        with Image.open(path) as raw:
            expected = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                           transforms.ToTensor()])(raw.convert("RGB"))
        assert torch.equal(image, expected)
        assert label == index[path.parent.name]
    # 'test' means the validation folder for ImageNet, and 'ImgNet' (the original configs' name) works
    again = load_dataset("ImgNet", "test", root)
    assert [s for s in again.samples] == dataset.samples


def test_imagenet_folder_layouts_and_bad_folders(imagenet_sample_dir, tmp_path):
    wnid = sorted(p.name for p in imagenet_sample_dir.iterdir() if p.is_dir())[3]
    jpeg = next((imagenet_sample_dir / wnid).iterdir())
    val = tmp_path / "imagenet" / "val"
    (val / wnid).mkdir(parents=True)
    (val / wnid / jpeg.name).symlink_to(jpeg)
    (val / wnid / "notes.txt").write_text("not an image")
    dataset = load_dataset("imagenet", "val", tmp_path)  # <root>/imagenet/val
    assert len(dataset) == 1 and dataset.samples[0][1] == [w for w, _ in rdata.imagenet_wnids()].index(wnid)

    for bad in ("n99999999", "cats"):  # not one of the 1,000 wnids
        (val / bad).mkdir()
        with pytest.raises(DataError, match=f"{bad}.*not named after an ImageNet-1k wnid"):
            load_dataset("imagenet", "val", tmp_path)
        (val / bad).rmdir()
    only_bad = tmp_path / "other" / "val" / "cats"
    only_bad.mkdir(parents=True)
    with pytest.raises(DataError, match="<wnid>"):  # no wnid folder at all: nothing that looks like ImageNet
        load_dataset("imagenet", "val", tmp_path / "other")

    (val / wnid / "broken.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    dataset = load_dataset("imagenet", "val", tmp_path)
    broken = [i for i, (p, _) in enumerate(dataset.samples) if p.name == "broken.JPEG"]
    with pytest.raises(DataError, match="broken.JPEG"):
        dataset[broken[0]]
    from robnets.evaluation.runner import iterate_batches

    with pytest.raises(DataError, match="broken.JPEG") as info:  # inside a data-loader worker: the cause, one line
        list(iterate_batches(dataset, 1, num_workers=1))
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_imagenet_wnids_match_the_standard_list(imagenet_sample_dir):
    wnids = rdata.imagenet_wnids()
    assert len(wnids) == 1000
    ids = [w for w, _ in wnids]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    lines = (imagenet_sample_dir.parent / "wnids.txt").read_text().splitlines()
    assert ids == [line.split()[0] for line in lines]
    assert wnids[1] == ("n01443537", "goldfish")


# ------------------------------------------------------------------------------------ roots and errors
def test_missing_data_gives_one_actionable_error(tmp_path):
    for name, layout in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                         ("svhn", "test_32x32.mat"), ("imagenet", "<wnid>")):
        with pytest.raises(DataError) as info:
            load_dataset(name, "test", tmp_path / "nowhere")
        message = str(info.value)
        assert layout in message and str(tmp_path / "nowhere") in message
        assert "--data-dir" in message and "ROBNETS_DATA" in message
        assert "\n" not in message


def test_missing_data_does_not_download(tmp_path, monkeypatch):
    import torchvision.datasets

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("load_dataset tried to download without download=True")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", refuse)
    monkeypatch.setattr(torchvision.datasets, "SVHN", refuse)
    for name in ("cifar10", "svhn"):
        with pytest.raises(DataError):
            load_dataset(name, "train", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_resolve_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root() == Path("data")
    assert resolve_data_root(None, "from/config") == Path("from/config")
    monkeypatch.setenv("ROBNETS_DATA", "/from/env")
    assert resolve_data_root(None, "from/config") == Path("/from/env")
    assert resolve_data_root("/from/cli", "from/config") == Path("/from/cli")
    assert resolve_data_root("~/cli") == Path.home() / "cli"
    monkeypatch.setenv("ROBNETS_DATA", "")  # an empty variable counts as unset
    assert resolve_data_root(None, "from/config") == Path("from/config")
    assert resolve_data_root(None, None) == Path("data")


def test_load_dataset_default_root_is_env_then_dot_data(monkeypatch, tmp_path):
    images, labels = _synthetic(3, seed=10)
    _write_npz(tmp_path / "env" / "cifar10" / "test.npz", images, labels)
    _write_npz(tmp_path / "data" / "cifar10" / "test.npz", images[::-1].copy(), labels[::-1].copy())
    monkeypatch.chdir(tmp_path)
    assert np.array_equal(load_dataset("cifar10", "test").images.numpy(), images[::-1])  # ./data
    monkeypatch.setenv("ROBNETS_DATA", str(tmp_path / "env"))
    assert np.array_equal(load_dataset("cifar10", "test").images.numpy(), images)


# ------------------------------------------------------------------------------------ sample and names
def test_embedded_sample_is_the_first_500_test_images(cifar10_dir):
    sample = rdata.load_sample()
    with np.load(cifar10_dir / "test.npz") as arrays:
        images, labels = arrays["images"][:500], arrays["labels"][:500]
    assert len(sample) == 500 and sample.num_classes == 10
    assert np.array_equal(sample.images.numpy(), images)
    assert np.array_equal(sample.labels.numpy(), labels)
    again = load_dataset("cifar10-sample")  # no root needed, none looked up
    assert torch.equal(again.images, sample.images) and torch.equal(again.labels, sample.labels)
    assert torch.equal(load_dataset("sample", "test", "/does/not/exist").labels, sample.labels)


def test_embedded_sample_without_shared():
    sample = load_dataset("cifar10-sample")
    assert tuple(sample.images.shape) == (500, 32, 32, 3) and sample.images.dtype == torch.uint8
    assert sample.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # the famous first test labels
    assert set(sample.labels.tolist()) == set(range(10))
    with pytest.raises(DataError, match="no split 'train'"):
        load_dataset("cifar10-sample", "train")


def test_dataset_names_and_aliases():
    assert rdata.canonical_dataset_name("SVHN") == "svhn"
    assert rdata.canonical_dataset_name("ImgNet") == "imagenet"
    assert rdata.canonical_dataset_name(" CIFAR10 ") == "cifar10"
    assert rdata.canonical_dataset_name("cifar-100") == "cifar100"
    with pytest.raises(DataError) as info:
        load_dataset("cifar11", "test", "/nowhere")
    assert "unknown dataset 'cifar11'" in str(info.value) and "did you mean 'cifar10'" in str(info.value)
    with pytest.raises(DataError, match="no split 'validation'"):
        load_dataset("cifar10", "validation", "/nowhere")
    with pytest.raises(DataError, match="no split 'train'"):
        load_dataset("imagenet", "train", "/nowhere")


def test_cifar_arrays_of_another_resolution_are_refused(tmp_path):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    images = np.zeros((4, 64, 64, 3), dtype=np.uint8)
    np.savez(folder / "test.npz", images=images, labels=np.arange(4))
    with pytest.raises(DataError, match="images must be N x 32 x 32 x 3 .* got 4x64x64x3"):
        load_dataset("cifar10", "test", tmp_path)


def test_labels_that_are_not_whole_numbers_are_refused_not_truncated(tmp_path):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    images = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    np.savez(folder / "test.npz", images=images, labels=np.array([1.0, 2.7, 3.0]))
    with pytest.raises(DataError, match="labels .* must be integers, found 2.7"):
        load_dataset("cifar10", "test", tmp_path)
    np.savez(folder / "test.npz", images=images, labels=np.array([1.0, 2.0, 3.0]))  # whole numbers as floats
    assert load_dataset("cifar10", "test", tmp_path).labels.tolist() == [1, 2, 3]


def test_select_takes_examples_in_the_given_order_and_refuses_indices_outside():
    from robnets.data import load_sample
    from robnets.errors import DataError

    sample = load_sample()
    picked = sample.select([5, 0, 5])
    assert len(picked) == 3 and picked.labels.tolist() == [int(sample.labels[i]) for i in (5, 0, 5)]
    assert torch.equal(picked.batch(0, 1)[0], sample.batch(5, 6)[0])
    with pytest.raises(DataError, match="indices must lie in"):
        sample.select([len(sample)])


def test_packed_bits_round_trip_compactly():
    from robnets.io import pack_bits, unpack_bits

    flags = np.random.default_rng(0).random(10_000) < 0.4
    text = pack_bits(torch.from_numpy(flags))
    assert len(text) == 1668 and np.array_equal(unpack_bits(text, 10_000), flags)
    assert np.array_equal(unpack_bits(pack_bits([True, False, True]), 3), [True, False, True])
    with pytest.raises(ValueError, match="not 9"):
        unpack_bits(pack_bits([True] * 17), 9)


def _bad_images(folder):  # noqa: ANN001, ANN202
    """Files that image decoders refuse, each with its own kind of error (not only OSError)."""
    import struct
    import zlib

    def chunk(kind, data):  # noqa: ANN001, ANN202
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n"
    files = {
        "empty.JPEG": b"",
        "random.JPEG": bytes(range(256)) * 4,
        "truncated.JPEG": b"\xff\xd8\xff\xe0" + b"\x00" * 30,
        "text.png": b"just some text, not pixels\n",
        # a header claiming 30,000 x 30,000 pixels: PIL's decompression-bomb guard (its own error class)
        "bomb.png": png + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""),
        # a valid header, then image data that does not inflate
        "garbled.png": png + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", b"\x00garbage\xff" * 3) + chunk(b"IEND", b""),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return sorted(files)


def test_any_undecodable_image_is_one_line_naming_the_file(tmp_path):
    from robnets.evaluation.runner import iterate_batches

    wnid = rdata.imagenet_wnids()[7][0]
    folder = tmp_path / "imagenet" / "val" / wnid
    folder.mkdir(parents=True)
    names = _bad_images(folder)
    dataset = load_dataset("imagenet", "val", tmp_path)
    kinds = set()
    for i, (path, _) in enumerate(dataset.samples):
        with pytest.raises(DataError, match=f"cannot decode image .*{path.name}") as info:
            dataset[i]
        assert "\n" not in str(info.value)
        kinds.add(str(info.value).split("(", 1)[1].split(":", 1)[0])
    assert len(names) == len(dataset) and len(kinds) >= 3, kinds  # several error classes, all caught
    for name in ("bomb.png", "garbled.png"):  # inside a data-loader worker too
        single = tmp_path / "one" / "imagenet" / "val" / wnid
        single.mkdir(parents=True, exist_ok=True)
        for old in single.iterdir():
            old.unlink()
        (single / name).write_bytes((folder / name).read_bytes())
        with pytest.raises(DataError, match=name) as info:
            list(iterate_batches(load_dataset("imagenet", "val", tmp_path / "one"), 1, num_workers=1))
        assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
