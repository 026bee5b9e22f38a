"""Checkpoints: the original RobNets format (plain and DDP train state with pickled foreign objects),
plain state dicts, this project's safetensors; strict matching with clear errors; no code execution."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch

import robnets
from robnets.errors import CheckpointError
from robnets.models.pretrained import pretrained_info
from robnets.models.loading import load_model
from robnets.models.checkpoint import load_weights, read_checkpoint, save_weights

FIXTURES = {
    "robnet_free_C8": "robnet_free",
    "robnet_large_v1_C8_L8_ddp_trainstate": "robnet_large_v1",
    "robnet_large_v1_imagenet_C8_L5": "robnet_large_v1",
}


def _fixture(reference_dir, stem):
    folder = reference_dir / "original_checkpoints"
    expected = torch.load(folder / f"{stem}.expected.pt", weights_only=True)
    return folder / f"{stem}.pth.tar", expected


@pytest.mark.parametrize("stem", ["robnet_free_C8", "robnet_large_v1_imagenet_C8_L5"])
def test_original_checkpoints_reproduce_the_original_logits(reference_dir, stem):
    path, expected = _fixture(reference_dir, stem)
    model = load_model(path, FIXTURES[stem], **expected["model_param"])
    assert not model.training
    with torch.no_grad():
        logits = model(expected["inputs"])
    assert (logits - expected["logits"]).abs().max().item() <= 1e-4


def test_ddp_train_state_loads_without_importing_its_scheduler(reference_dir):
    path, expected = _fixture(reference_dir, "robnet_large_v1_C8_L8_ddp_trainstate")
    sys.modules.pop("lr_scheduler", None)
    loaded = read_checkpoint(path)
    assert "lr_scheduler" not in sys.modules  # the pickled CosineLRScheduler's module was never imported
    assert loaded.source_format == "original"
    assert loaded.extras == {"epoch": 169, "best_acc": 52.1}
    assert not any(k.startswith("module.") for k in loaded.state_dict)
    model = load_model(path, "robnet_large_v1", **expected["model_param"])  # strict: every key matched
    assert set(model.state_dict()) == set(loaded.state_dict)


def test_ddp_train_state_tensors_equal_a_full_unpickle(reference_dir, monkeypatch):
    """Our restricted read gives exactly the tensors the full (unsafe) unpickler gives. The full unpickle
    is done here only because this fixture is the project's own trusted reference file."""
    path, _ = _fixture(reference_dir, "robnet_large_v1_C8_L8_ddp_trainstate")
    stub = types.ModuleType("lr_scheduler")
    stub.CosineLRScheduler = type("CosineLRScheduler", (), {})
    monkeypatch.setitem(sys.modules, "lr_scheduler", stub)
    full = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    ours = read_checkpoint(path).state_dict
    assert set(ours) == {k.removeprefix("module.") for k in full}
    assert all(torch.equal(ours[k.removeprefix("module.")], v) for k, v in full.items())


def test_ddp_train_state_reproduces_expected_logits(reference_dir):
    path, expected = _fixture(reference_dir, "robnet_large_v1_C8_L8_ddp_trainstate")
    model = load_model(path, "robnet_large_v1", **expected["model_param"])
    with torch.no_grad():
        assert (model(expected["inputs"]) - expected["logits"]).abs().max().item() <= 1e-4


def test_mismatching_head_names_keys_and_shapes(reference_dir):
    path, expected = _fixture(reference_dir, "robnet_free_C8")
    params = {**expected["model_param"], "num_classes": 100}
    with pytest.raises(CheckpointError) as info:
        load_model(path, "robnet_free", **params)
    message = str(info.value)
    assert "\n" not in message
    assert "classifier.weight is [10, 128] in the checkpoint but [100, 128] in the model" in message
    assert "set num_classes to match" in message


def test_mismatching_architecture_names_missing_and_unexpected_keys(reference_dir):
    path, expected = _fixture(reference_dir, "robnet_free_C8")
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: cells\.0\._ops\.1\..*not in the model"):
        load_model(path, "robnet_large_v1", **{**expected["model_param"], "share": True})
    with pytest.raises(CheckpointError, match=r"stem\.0\.weight is \[24, 3, 3, 3\] in the checkpoint but \[48"):
        load_model(path, "robnet_free", **{**expected["model_param"], "C": 16})


def test_safetensors_round_trip_with_metadata(tmp_path):
    torch.manual_seed(0)
    model = robnets.create_model("robnet_free", C=4)
    path = save_weights(model, tmp_path / "w.safetensors", dataset="cifar10", threat_model="Linf", eps=8 / 255)
    loaded = read_checkpoint(path)
    assert loaded.source_format == "safetensors"
    assert loaded.metadata["architecture"] == str(model.genotype)
    assert loaded.metadata["model"] == "robnet_free"
    assert loaded.metadata["dataset"] == "cifar10" and loaded.metadata["threat_model"] == "Linf"
    assert float(loaded.metadata["eps"]) == pytest.approx(8 / 255)
    rebuilt = load_model(path)  # architecture and arguments come from the metadata
    assert rebuilt.genotype == model.genotype and rebuilt.config == model.config
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left behind


def test_safetensors_for_a_custom_genotype_rebuilds_it(tmp_path):
    model = robnets.create_model("robnet", genotype="0111-011111-10101110-1101111000", C=4, layers=3)
    path = save_weights(model, tmp_path / "custom.safetensors", dtype=torch.float16)
    rebuilt = load_model(path)
    assert str(rebuilt.genotype) == "0111-011111-10101110-1101111000"
    assert rebuilt.stem[0].weight.dtype == torch.float32  # fp16 file, cast back on load
    assert torch.allclose(rebuilt.stem[0].weight, model.stem[0].weight, atol=1e-3)


def test_safetensors_refuses_a_different_architecture(tmp_path):
    model = robnets.create_model("robnet", genotype="0111-011111-10101110-1101111000", C=4, layers=3)
    path = save_weights(model, tmp_path / "custom.safetensors")
    other = robnets.create_model("robnet", genotype="1111-011111-10101110-1101111000", C=4, layers=3)
    with pytest.raises(CheckpointError, match="was saved for architecture 0111"):
        load_model(path, other)


@pytest.mark.parametrize("wrapper", ["", "module.", "_orig_mod."])
def test_plain_state_dicts_load(tmp_path, wrapper):
    model = robnets.create_model("robnet_large_v1", C=4, layers=3)
    torch.save({wrapper + k: v for k, v in model.state_dict().items()}, tmp_path / "plain.pt")
    other = robnets.create_model("robnet_large_v1", C=4, layers=3)
    load_weights(other, tmp_path / "plain.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_missing_truncated_and_foreign_files_fail_clearly(tmp_path, reference_dir):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth.tar")
    data = (reference_dir / "original_checkpoints" / "robnet_free_C8.pth.tar").read_bytes()
    (tmp_path / "cut.pth.tar").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "cut.pth.tar")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path / "text.pth")
    torch.save({"epoch": 3, "notes": "x"}, tmp_path / "noweights.pth")
    with pytest.raises(CheckpointError, match="holds no weights"):
        read_checkpoint(tmp_path / "noweights.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(tmp_path / "bad.safetensors")


class _Exploit:
    """Pickles into a call of os.system: loading it unsafely would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickles_are_never_executed(tmp_path, legacy):
    marker = tmp_path / "pwned"
    model = robnets.create_model("robnet_large_v1", C=4, layers=3)
    payload = {"state_dict": model.state_dict(), "scheduler": _Exploit(marker), "epoch": 1}
    torch.save(payload, tmp_path / "evil.pth.tar", _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=r"refusing to load .*references (posix|os)\.system"):
        read_checkpoint(tmp_path / "evil.pth.tar")
    assert not marker.exists()


class _EvalExploit:
    """Pickles into a call of the builtin eval (legacy pickles name it without its module)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_refused_builtin_is_named_not_called_corrupt(tmp_path, legacy):
    marker = tmp_path / "pwned"
    model = robnets.create_model("robnet_large_v1", C=4, layers=3)
    torch.save({"state_dict": model.state_dict(), "x": _EvalExploit(marker)}, tmp_path / "evil.pt",
               _use_new_zipfile_serialization=not legacy)
    try:
        read_checkpoint(tmp_path / "evil.pt")  # an inert placeholder may take eval's place: weights load
    except CheckpointError as exc:
        assert "refusing to load" in str(exc) and "eval" in str(exc) and "corrupt" not in str(exc), exc
    assert not marker.exists()


def test_unknown_classes_become_inert_placeholders(tmp_path):
    """A class that does not exist here (like the original's lr_scheduler.CosineLRScheduler) is neither
    imported nor constructed: an inert placeholder takes its data and the weights load."""
    module = types.ModuleType("robnets_test_foreign")
    sys.modules["robnets_test_foreign"] = module
    foreign = type("Scheduler", (), {"__module__": "robnets_test_foreign"})
    module.Scheduler = foreign
    scheduler = foreign()
    scheduler.T_max, scheduler.last = 170, torch.ones(2)
    model = robnets.create_model("robnet_large_v1", C=4, layers=3)
    torch.save({"state_dict": model.state_dict(), "scheduler": scheduler}, tmp_path / "ckpt.pth.tar")
    del sys.modules["robnets_test_foreign"]
    loaded = read_checkpoint(tmp_path / "ckpt.pth.tar")
    assert "robnets_test_foreign" not in sys.modules
    assert set(loaded.state_dict) == set(model.state_dict())


ROBNET_FREE_WEIGHTS = pretrained_info("robnet_free").path()


@pytest.mark.slow
def test_committed_robnet_free_weights_are_self_describing_and_trained():
    """The published robnet_free weights: fp16 storage under 16 MiB, metadata that
    names the paper's architecture and the measured test accuracies, and real accuracy on real test images
    after loading into the fp32 model."""
    from robnets.data import load_sample

    assert ROBNET_FREE_WEIGHTS.stat().st_size <= 16 * 2**20
    loaded = read_checkpoint(ROBNET_FREE_WEIGHTS)
    meta = loaded.metadata
    assert meta["model"] == "robnet_free" and meta["dataset"] == "cifar10" and meta["threat_model"] == "Linf"
    assert float(meta["eps"]) == pytest.approx(8 / 255)
    assert float(meta["test_clean"]) > 50 and float(meta["test_pgd20"]) > 30 and meta["test_pgd20_n"] == "10000"
    assert {t.dtype for t in loaded.state_dict.values() if t.is_floating_point()} == {torch.float16}
    model = robnets.load_model(ROBNET_FREE_WEIGHTS)
    assert str(model.genotype) == meta["architecture"] == str(robnets.create_model("robnet_free").genotype)
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    images, labels = load_sample().batch(0, 100)
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.45  # 55 % on the first 200 embedded test images (chance: 10 %)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["robnet_free_C8", "robnet_large_v1_C8_L8_ddp_trainstate",
                                  "robnet_large_v1_imagenet_C8_L5"])
def test_original_checkpoints_load_without_naming_the_model(reference_dir, name):
    """Width, depth, classes, stem and which RobNet are read from the keys and shapes; the logits are the
    original implementation's."""
    from robnets.models.loading import infer_robnet

    path = reference_dir / "original_checkpoints" / f"{name}.pth.tar"
    expected = torch.load(reference_dir / "original_checkpoints" / f"{name}.expected.pt", weights_only=True)
    model_name, kwargs = infer_robnet(read_checkpoint(path).state_dict)
    param = expected["model_param"]
    assert model_name == ("robnet_free" if name.startswith("robnet_free") else "robnet_large_v1")
    assert (kwargs["C"], kwargs["layers"], kwargs["num_classes"]) == (param["C"], param["layers"],
                                                                      param["num_classes"])
    assert kwargs["imagenet_stem"] is bool(param.get("ImgNetBB", False))
    model = robnets.load_model(path)
    with torch.no_grad():
        assert (model(expected["inputs"]) - expected["logits"]).abs().max() <= 1e-4


def test_an_unrecognizable_state_dict_asks_for_the_model(tmp_path):
    from robnets.models.loading import infer_robnet

    model = robnets.create_model("resnet18")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    assert infer_robnet(model.state_dict()) is None
    with pytest.raises(CheckpointError, match="name the model"):
        robnets.load_model(tmp_path / "plain.pt")


def test_flipped_bytes_inside_a_tensor_are_refused(tmp_path):
    """Project files record a checksum of their tensors; a changed byte is refused at load, in one line."""
    from robnets.models.checkpoint import save_weights

    model = robnets.create_model("robnet_large_v1", C=4, layers=3)
    path = save_weights(model, tmp_path / "w.safetensors", dataset="cifar10")
    assert "tensors_sha256" in read_checkpoint(path).metadata
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum") as info:
        robnets.load_model(path)
    assert "\n" not in str(info.value)


def test_metadata_cannot_make_the_loader_allocate(tmp_path):
    """A file whose metadata claims C=20000 is refused from its tensors' shapes before anything is built."""
    import json

    from safetensors.torch import save_file

    from robnets.models.checkpoint import save_weights

    path = save_weights(robnets.create_model("robnet_large_v1", C=4, layers=3), tmp_path / "w.safetensors")
    loaded = read_checkpoint(path)
    meta = dict(loaded.metadata)
    meta["model_args"] = json.dumps({**json.loads(meta["model_args"]), "C": 20000})
    del meta["tensors_sha256"]
    save_file(loaded.state_dict, str(tmp_path / "evil.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="against its own metadata"):
        robnets.load_model(tmp_path / "evil.safetensors")
    meta["model_args"] = "[1, 2]"
    save_file(loaded.state_dict, str(tmp_path / "evil2.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="JSON object"):
        robnets.load_model(tmp_path / "evil2.safetensors")
