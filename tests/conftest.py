"""Shared test fixtures. Reference data lives in ../shared beside the checkout; tests that need it skip
with a clear reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROBNETS_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
CIFAR10_NPZ = SHARED / "data" / "cifar10"
IMAGENET_SAMPLE = SHARED / "data" / "imagenet-sample"

# Under pytest-xdist (scripts/test.sh runs ``-n 2``) each worker gets its share of the cores: small CPU models
# gain little from a second OpenMP thread, so two single-threaded workers finish the suite sooner.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, os.cpu_count() or 1) // _WORKERS)
torch.set_num_threads(THREADS)
if _WORKERS > 1:
    # Subprocesses the tests start (CLI runs, torchrun ranks) too: beside a busy worker, a second OpenMP thread
    # spin-waits for a core and made those runs 4-5x slower.
    os.environ["OMP_NUM_THREADS"] = str(THREADS)

def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared reference data), which is absent here")
    return path


@pytest.fixture
def reference_dir() -> Path:
    return _need(REFERENCE)


@pytest.fixture
def cifar10_dir() -> Path:
    return _need(CIFAR10_NPZ / "test.npz").parent


@pytest.fixture
def imagenet_sample_dir() -> Path:
    return _need(IMAGENET_SAMPLE / "val")


@pytest.fixture(autouse=True)
def _isolate_data_env(monkeypatch):
    monkeypatch.delenv("ROBNETS_DATA", raising=False)


@pytest.fixture
def tiny_robnet():
    """A small real RobNet (robnet_free genotype, C=4, 3 cells: one normal and two reductions)."""
    import robnets

    torch.manual_seed(0)
    genotype = str(robnets.models.ROBNET_FREE).split("_")[:3]
    return robnets.create_model("robnet", genotype="_".join(genotype), C=4, layers=3)
