"""Two "nodes" on one machine: torchrun --nnodes 2 with its c10d rendezvous on the loopback address (gloo), one
process each, train a few steps and run a small search; the results equal one node with two processes and the
same global batch. With two ranks every all-reduce adds two numbers, which is exact in either order, so the
tolerance is rounding only (1e-6 on the weights, equal scores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from robnets.data import load_sample
from robnets.io import read_jsonl
from robnets.models.checkpoint import read_checkpoint

from .conftest import REPO

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
TRAIN = ["model.name=robnet_large_v1", "model.C=4", "model.layers=3", "train.batch_size=16", "train.val_size=32",
         "train.lr=0.05", "train.scale_lr=false", "train.device=cpu", "train.val_attack_steps=2", "seed=3",
         "train.co_probe_size=32", "train.method=fgsm_rs", "train.epochs=1", "train.train_size=96"]
SEARCH = ["search.C=4", "search.layers=3", "search.batch_size=16", "search.supernet_max_steps=4", "search.num_samples=4",
          "search.finetune_steps=2", "search.eval_size=16", "search.val_size=48", "search.eval_attack_steps=2",
          "search.fsp_size=8", "search.bn_recalibration_batches=1", "search.device=cpu", "seed=0",
          "search.method=fgsm_rs"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    sample = load_sample()
    folder = tmp_path_factory.mktemp("data") / "cifar10"
    folder.mkdir()
    np.savez(folder / "train.npz", images=sample.images.numpy()[:320], labels=sample.labels.numpy()[:320])
    np.savez(folder / "test.npz", images=sample.images.numpy()[320:], labels=sample.labels.numpy()[320:])
    return folder.parent


def _sets(overrides):  # noqa: ANN001, ANN202
    return [a for kv in overrides for a in ("--set", kv)]


def _torchrun(nodes: int, port: int, args: list[str]) -> None:
    """One node with two processes, or two nodes of one process each meeting at a c10d rendezvous on 127.0.0.1."""
    base = [sys.executable, "-m", "torch.distributed.run"]
    if nodes == 1:
        commands = [[*base, "--nproc_per_node", "2", "--master_port", str(port)]]
    else:
        commands = [[*base, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                     "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"robnets-test-{port}"]] * 2
    running = [subprocess.Popen([*c, "-m", "robnets", *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for c in commands]
    for process in running:
        _, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_two_nodes_train_like_one_node_with_the_same_global_batch(data, tmp_path):
    for nodes, port in ((1, 29641), (2, 29642)):
        _torchrun(nodes, port, ["train", "--data-dir", str(data), "--output-dir", str(tmp_path / f"n{nodes}"),
                                "--no-progress", "--distributed", *_sets(TRAIN)])
    a = read_checkpoint(tmp_path / "n1" / "final.safetensors").state_dict
    b = read_checkpoint(tmp_path / "n2" / "final.safetensors").state_dict
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    assert "over 2 process(es)" in (tmp_path / "n2" / "train.log").read_text()


@pytest.mark.slow
def test_two_nodes_search_like_one_node(data, tmp_path):
    config = str(REPO / "experiments" / "search_cifar10" / "config.yaml")
    for nodes, port in ((1, 29643), (2, 29644)):
        _torchrun(nodes, port, ["search", "--config", config, "--data-dir", str(data), "--output-dir",
                                str(tmp_path / f"n{nodes}"), "--no-progress", "--distributed", *_sets(SEARCH)])
    one = {r["index"]: r for r in read_jsonl(sorted((tmp_path / "n1").glob("scores.rank*.jsonl")))}
    two = {r["index"]: r for r in read_jsonl(sorted((tmp_path / "n2").glob("scores.rank*.jsonl")))}
    assert sorted(one) == sorted(two) == [0, 1, 2, 3]
    for i in one:
        assert (one[i]["clean"], one[i]["adv"]) == (two[i]["clean"], two[i]["adv"]), i
        assert one[i]["fsp"] == pytest.approx(two[i]["fsp"], rel=1e-6)
    a = read_checkpoint(tmp_path / "n1" / "supernet.safetensors").state_dict
    b = read_checkpoint(tmp_path / "n2" / "supernet.safetensors").state_dict
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-6
    assert json.loads((tmp_path / "n2" / "analysis.json").read_text())["n"] == 4
