"""Hostile or unlucky input through the command line, table-driven: each case must end in exactly one line
``robnets: error: ...`` naming the problem, exit status 2, and leave every file as it was (nothing written,
nothing changed)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import robnets
from robnets.cli import main
from robnets.io import folder_lock
from robnets.models.checkpoint import read_checkpoint, save_weights


BASE = ["--model", "robnet_large_v1", "--set", "model.C=4", "--set", "model.layers=3", "--no-progress", "--device",
        "cpu", "--sanity", "off"]
TINY = [*BASE, "--sample", "--n", "4", "--attacks", "clean"]


def _weights(tmp: Path, name: str = "w.safetensors", **edit) -> Path:
    model = robnets.create_model("robnet_large_v1", C=4, layers=3)
    path = save_weights(model, tmp / name, dataset="cifar10")
    if not edit:
        return path
    loaded = read_checkpoint(path)
    state, meta = dict(loaded.state_dict), dict(loaded.metadata)
    meta.pop("tensors_sha256")
    if "tensor" in edit:
        key, value = edit["tensor"]
        state[key] = value
    meta.update(edit.get("meta", {}))
    save_file(state, str(path), metadata=meta)
    return path


def _cifar(tmp: Path, size: int = 32, labels=None) -> Path:  # noqa: ANN001
    root = tmp / "data" / "cifar10"
    root.mkdir(parents=True)
    images = np.zeros((8, size, size, 3), np.uint8)
    np.savez(root / "test.npz", images=images, labels=np.arange(8) % 10 if labels is None else labels)
    np.savez(root / "train.npz", images=images, labels=np.arange(8) % 10 if labels is None else labels)
    return tmp / "data"


def _run_folder(tmp: Path, state: bytes | None) -> Path:
    folder = tmp / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("name: x\nmodel:\n  name: robnet_large_v1\n  C: 4\n  layers: 3\n")
    if state is not None:
        (folder / "state.pt").write_bytes(state)
    return folder


def _evil_pickle(tmp: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp / "pwned"),))

    path = tmp / "evil.pth.tar"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {}, "x": Evil()}, handle, protocol=2)
    return path


# (id, build: tmp -> argv, words the one line must contain)
CASES = [
    ("unknown attack", lambda t: ["eval", *BASE, "--sample", "--n", "4", "--attacks", "pgdx", "--untrained"], "unknown attack"),
    ("infinite eps", lambda t: ["eval", *TINY, "--untrained", "--set", "attack.eps=.inf"], "eps"),
    ("eps above 1", lambda t: ["eval", *TINY, "--untrained", "--set", "attack.eps=2"], "eps"),
    ("negative steps", lambda t: ["eval", *TINY, "--untrained", "--set", "attack.steps=-1"], "steps"),
    ("n of zero", lambda t: ["eval", *BASE, "--sample", "--n", "0", "--attacks", "clean", "--untrained"], "--n"),
    ("missing checkpoint", lambda t: ["eval", *TINY, "--checkpoint", str(t / "nope.pth")], "not found"),
    ("garbage checkpoint", lambda t: ["eval", *TINY, "--checkpoint", str(_bytes(t, b"\x00garbage" * 50))],
     "checkpoint"),
    ("truncated safetensors", lambda t: ["eval", *TINY, "--checkpoint", str(_truncate(_weights(t)))],
     "truncated"),
    ("NaN weights", lambda t: ["eval", *TINY, "--checkpoint", str(_weights(
        t, tensor=("classifier.weight", torch.full((10, 64), float("nan")))))], "NaN"),
    ("integer weights", lambda t: ["eval", *TINY, "--checkpoint", str(_weights(
        t, tensor=("classifier.weight", torch.ones(10, 64, dtype=torch.int64))))], "floating-point"),
    ("flipped byte", lambda t: ["eval", *TINY, "--checkpoint", str(_flip(_weights(t)))], "checksum"),
    ("metadata asks for C=20000", lambda t: ["eval", "--sample", "--n", "4", "--attacks", "clean", "--checkpoint",
                                            str(_weights(t, meta={"model_args": json.dumps(
                                                {"C": 20000, "layers": 3})}))], "its own metadata"),
    ("metadata not an object", lambda t: ["eval", "--sample", "--n", "4", "--attacks", "clean", "--checkpoint",
                                         str(_weights(t, meta={"model_args": "[1]"}))], "JSON object"),
    ("pickle running code", lambda t: ["eval", *TINY, "--checkpoint", str(_evil_pickle(t))], "could run code"),
    ("unknown config name", lambda t: ["eval", "--config", "RobNet_free_cifar100", "--untrained"],
     "bundled experiment"),
    ("YAML python tag", lambda t: ["eval", "--config", str(_text(t, "c.yaml", "seed: !!python/object/apply:os.system"
                                                                " ['true']\n")), "--untrained"], "YAML"),
    ("config.py importing os", lambda t: ["eval", "--config", str(_text(t, "config.py", "import os\n")),
                                          "--untrained"], "not allowed"),
    ("unknown weights name", lambda t: ["eval", "--weights", "robnet_nope"], "no published weights"),
    ("images of another size", lambda t: ["eval", *BASE, "--attacks", "clean", "--dataset", "cifar10", "--data-dir",
                                          str(_cifar(t, size=16)), "--n", "4", "--untrained"], "32"),
    ("labels that are not integers", lambda t: ["eval", *BASE, "--attacks", "clean", "--dataset", "cifar10", "--data-dir",
                                                str(_cifar(t, labels=np.linspace(0, 9, 8))), "--n", "4",
                                                "--untrained"], "label"),
    ("output folder is a file", lambda t: ["eval", *TINY, "--untrained", "--output-dir",
                                           str(_text(t, "results", "x"))], "is a file"),
    ("resume of a folder that is no run", lambda t: ["train", "--resume", str(t)], "config.yaml"),
    ("resume a corrupt state", lambda t: ["train", "--resume", str(_run_folder(t, b"PK\x03\x04torn"))],
     "state"),
    ("search resume of no search", lambda t: ["search", "--resume", str(t)], "config.yaml"),
    ("search without config", lambda t: ["search"], "--config"),
]


def _bytes(tmp: Path, data: bytes) -> Path:
    path = tmp / "blob.pth.tar"
    path.write_bytes(data)
    return path


def _text(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:300])
    return path


def _flip(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x04
    path.write_bytes(bytes(data))
    return path


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_ends_in_one_line_and_changes_nothing(case, tmp_path, capsys, monkeypatch):
    _, build, words = case
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # default output folders (./runs) would land here
    argv = build(work)
    capsys.readouterr()
    before = _snapshot(work)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("robnets: error: "), err
    assert words.lower() in err[0].lower(), err[0]
    assert _snapshot(work) == before  # nothing written, nothing changed
    assert not (work / "pwned").exists()


def test_a_locked_run_folder_is_refused(tmp_path, capsys):
    """Two processes must not resume the same run folder at once."""
    folder = tmp_path / "search"
    folder.mkdir()
    from robnets.config import load_config, save_config

    save_config(load_config(None, ["search.C=4"]), folder / "config.yaml")
    with folder_lock(folder):
        assert main(["search", "--resume", str(folder), "--data-dir", str(tmp_path / "nodata")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in use by another process" in err[0]


def test_results_are_kept_when_the_disk_refuses(tmp_path, capsys, monkeypatch):
    """A disk that refuses the final write: the table is shown, the error is one line, every finished block is
    already on disk, and the same command then writes the results without computing anything again."""
    import robnets.evaluation.pipeline as pipeline
    import robnets.evaluation.shards as shards

    real = pipeline.write_results

    def full(results, folder, meta):  # noqa: ANN001, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "write_results", full)
    out = tmp_path / "run"
    command = ["eval", *BASE, "--sample", "--n", "4", "--attacks", "clean,fgsm", "--untrained", "--output-dir",
               str(out), "--eps-sweep", "0,8", "--sanity", "quick"]
    code = main(command)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert lines[-1].startswith("robnets: error: cannot write results") and "No space left" in lines[-1]
    assert "| fgsm" in captured.err  # the table, before the error
    kept = [json.loads(line)["attack"] for line in (out / "blocks.jsonl").read_text().splitlines()]
    assert kept == ["clean", "fgsm", "sweep:0/255", "sweep:8/255"]
    monkeypatch.setattr(pipeline, "write_results", real)

    def nothing_left(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a finished block was computed again")

    monkeypatch.setattr(shards, "evaluate", nothing_left)
    assert main(command) == 0
    done = json.loads((out / "results.json").read_text())
    assert [r["attack"] for r in done["results"]] == ["clean", "fgsm"] and not done.get("partial")
    assert (out / "eps_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Sanity checks" in (out / "results.md").read_text()
