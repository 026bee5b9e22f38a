"""Published weights by name (registry, sha256 refusal, torch.hub), bundled configs by name, file modes and
the wheel's contents."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile

import pytest
import torch

import robnets
from robnets.cli import main
from robnets.config import load_config
from robnets.errors import CheckpointError, ConfigError, RobnetsError
from robnets.io import sha256_file, write_json_atomic
from robnets.models import pretrained
from robnets.models.checkpoint import read_checkpoint
from robnets.models.pretrained import PRETRAINED, list_pretrained, pretrained_info

from .conftest import REPO


@pytest.mark.parametrize("entry", PRETRAINED, ids=lambda e: e.name)
def test_every_registry_entry_matches_its_shipped_file(entry):
    """File present, sha256 as recorded, and the file's own metadata agreeing with the registry."""
    path = entry.path()
    assert path.is_file() and sha256_file(path) == entry.sha256
    meta = read_checkpoint(path).metadata
    assert meta["model"] == entry.model and meta["dataset"] == entry.dataset
    assert meta["threat_model"] == entry.threat_model and float(meta["eps"]) == pytest.approx(entry.eps)
    assert entry.name.startswith(entry.model + ".") and entry.model in robnets.list_models()
    for key in ("clean", "pgd20"):
        assert entry.measured[key].n > 0 and 0 < entry.measured[key].accuracy < 100
        assert float(meta[f"test_{key}"]) == pytest.approx(entry.measured[key].accuracy)
    autoattack = entry.measured.get("autoattack")
    if autoattack is not None:  # the reference cascade on at least 200 points, as the run recorded it
        assert autoattack.n >= 200 and autoattack.accuracy <= entry.measured["pgd20"].accuracy + 5
        result = json.loads((REPO / "docs" / "data" / "weights" / f"{entry.name}-autoattack.json").read_text())
        (row,) = [r for r in result["results"] if r["attack"] == "autoattack"]
        assert row["accuracy"] == pytest.approx(autoattack.accuracy, abs=0.005) and row["n"] == autoattack.n
        assert result["weights"].find(entry.sha256[:16]) > 0


def test_create_model_pretrained_by_flag_tag_and_full_name():
    by_flag = robnets.create_model("robnet_compact", pretrained=True)
    by_name = robnets.create_model("robnet_compact.nfgsm_3ep_cifar10")
    by_tag = robnets.create_model("robnet_compact", pretrained="nfgsm_3ep_cifar10")
    loaded = robnets.load_model(pretrained_info("robnet_compact").path())
    for model in (by_name, by_tag, loaded):
        for (k, a), b in zip(by_flag.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), k
    assert not by_flag.training and by_flag.pretrained_name == "robnet_compact.nfgsm_3ep_cifar10"
    assert sum(p.numel() for p in by_flag.parameters()) == 408_474  # not the paper's 6.8 M robnet_large_v1
    from robnets.data import load_sample

    images, labels = load_sample().batch(0, 100)
    with torch.no_grad():
        assert (by_flag(images).argmax(1) == labels).float().mean() >= 0.35  # trained (chance 10 %)


def test_unknown_weights_and_mismatched_model_are_refused():
    with pytest.raises(RobnetsError, match="available: robnet_free"):
        robnets.create_model("robnet_large_v1", pretrained=True)
    with pytest.raises(RobnetsError, match="no published weights"):
        robnets.create_model("robnet_free", pretrained="nope")
    assert list_pretrained("robnet_free*") == ["robnet_free.nfgsm_4ep_cifar10"]


def _tampered(tmp_path, monkeypatch):
    entry = pretrained_info("robnet_compact")
    copy = tmp_path / entry.file
    shutil.copyfile(entry.path(), copy)
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0x01  # one flipped bit inside a tensor
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(pretrained.PretrainedWeights, "path", lambda self: tmp_path / self.file)
    return copy


def test_a_changed_weights_file_is_refused(tmp_path, monkeypatch, capsys):
    _tampered(tmp_path, monkeypatch)
    with pytest.raises(CheckpointError, match="not the published"):
        robnets.create_model("robnet_compact", pretrained=True)
    out = tmp_path / "run"
    assert main(["eval", "--weights", "robnet_compact", "--sample", "--n", "4", "--attacks", "clean",
                 "--output-dir", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256" in err[0] and "reinstall" in err[0]
    assert not out.exists()


def test_torch_hub_loads_from_the_repository():
    model = torch.hub.load(str(REPO), "robnet_compact", source="local", pretrained=True)
    reference = robnets.create_model("robnet_compact", pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    untrained = torch.hub.load(str(REPO), "robnet_free", source="local", C=8)
    assert type(untrained).__name__ == "RobNet" and untrained.config["C"] == 8


def test_weights_command_and_eval_by_name(tmp_path, capsys):
    assert main(["weights"]) == 0
    table = capsys.readouterr().out
    assert all(w.name in table for w in PRETRAINED) and "48.45 (n=10,000)" in table
    assert main(["weights", "--json"]) == 0
    assert {w["name"] for w in json.loads(capsys.readouterr().out)} == {w.name for w in PRETRAINED}
    out = tmp_path / "run"
    assert main(["eval", "--weights", "robnet_compact", "--sample", "--n", "20", "--attacks", "clean",
                 "--output-dir", str(out), "--no-progress", "--sanity", "off", "--device", "cpu"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["model"] == "robnet_compact" and "ca4dad47cd2eed5e" in result["weights"]


def test_eps_and_norm_flags(tmp_path):
    from robnets.cli import _eval_overrides, build_parser

    args = build_parser().parse_args(["eval", "--eps", "4/255", "--norm", "Linf"])
    config = load_config(None, _eval_overrides(args))
    assert config.attack.eps == pytest.approx(4 / 255) and config.attack.norm == "Linf"
    args = build_parser().parse_args(["eval", "--eps", "0.25", "--norm", "L2"])
    config = load_config(None, _eval_overrides(args))
    assert config.attack.l2_eps == pytest.approx(0.25) and config.attack.norm == "L2"
    for bad in ("inf", "-1/255", "8/0", "eight"):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["eval", "--eps", bad])
        assert exc.value.code == 2


def test_bundled_experiment_configs_load_by_name():
    for name in ("RobNet_free_cifar10", "robnet_compact_nfgsm_cpu", "search_cifar10"):
        by_name = load_config(name)
        by_path = load_config(REPO / "experiments" / name / "config.yaml")
        assert by_name == by_path and by_name.name == name
    with pytest.raises(ConfigError, match="RobNet_free_cifar10"):
        load_config("RobNet_free_cifar100")


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        write_json_atomic(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path):
    stale = tmp_path / ".a.json.x1y2.tmp"
    stale.write_text("torn")
    os.utime(stale, (0, 0))
    fresh = tmp_path / ".a.json.abcd.tmp"  # another writer may be using it right now
    fresh.write_text("in progress")
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert not stale.exists() and fresh.exists()


@pytest.mark.slow
def test_the_wheel_holds_configs_and_weights_and_builds_without_warnings(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "deprecat" not in (proc.stdout + proc.stderr).lower()
    (wheel,) = tmp_path.glob("robnets-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for entry in PRETRAINED:
        assert f"robnets/weights/{entry.file}" in names
    assert "robnets/experiments/RobNet_free_cifar10.yaml" in names
    assert not any(n.startswith(("tests/", "studies/", "benchmarks/")) for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT" in metadata and "<" not in metadata.split("Requires-Dist: torch")[1][:12]


def test_pretrained_with_another_class_count_keeps_the_backbone_and_replaces_the_head(caplog):
    import logging

    import torch

    with caplog.at_level(logging.INFO, logger="robnets.models"):
        tuned = robnets.create_model("robnet_compact", pretrained=True, num_classes=100)
    reference = robnets.create_model("robnet_compact", pretrained=True)
    assert tuned.classifier.out_features == 100 == tuned.num_classes and tuned.config["num_classes"] == 100
    assert tuned(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    ours, theirs = tuned.state_dict(), reference.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if not k.startswith("classifier."))
    assert [r.getMessage() for r in caplog.records if "classifier replaced" in r.getMessage()]
    same = robnets.create_model("robnet_compact", pretrained=True, num_classes=10)  # the weights' own: nothing replaced
    assert torch.equal(same.classifier.weight, reference.classifier.weight)
