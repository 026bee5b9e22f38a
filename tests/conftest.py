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
_BACKGROUND_MODULE = None  # tests/test_triton_kernels.py once its interpreter subprocess started
# The tuned kernels' choices stay in memory during tests (never written to the user's ~/.cache).
os.environ.setdefault("ROBNETS_TUNING_CACHE", "off")


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    """Start the Triton-interpreter subprocess as soon as tests that need it are collected, so that it runs
    beside the other tests instead of after them (tests/test_triton_kernels.py)."""
    global _BACKGROUND_MODULE
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # every worker collects every test: the one that runs them starts the subprocess (its fixture)
    for item in items:
        if "interpreted" in getattr(item, "fixturenames", ()):
            item.module.start_interpreter_run()
            _BACKGROUND_MODULE = item.module
            break


def pytest_runtest_setup(item):  # noqa: ARG001
    """While the interpreter subprocess keeps one core busy, tests get one thread fewer: oversubscribed
    OpenMP threads spin-wait, and the first tests ran 2-3x slower beside it. Changed between tests only."""
    busy = _BACKGROUND_MODULE is not None and _BACKGROUND_MODULE.interpreter_running()
    threads = max(1, THREADS - 1) if busy else THREADS
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


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
