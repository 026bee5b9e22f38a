"""Execution context passed around explicitly: device, precision, model mode; the one seed derivation."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from .errors import RobnetsError

PRECISIONS = ("fp32", "bf16")
THREADS_ENV = "ROBNETS_THREADS"


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own mode on exit (even after an error)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise RobnetsError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision='bf16'``; nothing for fp32."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RobnetsError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RobnetsError(f"unknown device {name!r}; use cpu, cuda or auto") from None


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):  # noqa: ANN001, ANN201
    """A tqdm bar, drawn only when asked for and stderr is a terminal (no bar frames in log files)."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not (enabled and sys.stderr.isatty()), **kwargs)


def derive_seed(*values: int) -> int:
    """A 63-bit seed hashed from non-negative integers (numpy ``SeedSequence``), well mixed so that nearby
    tuples such as ``(seed, epoch, step)`` and ``(seed, epoch, step + 1)`` give unrelated streams."""
    words = [int(v) for v in values]
    if any(v < 0 for v in words):
        raise ValueError(f"seed components must be non-negative integers, got {values}")
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & ((1 << 63) - 1)


def default_threads() -> int:
    """CPU threads for one process: the cores not already busy (1-minute load average) and, under torchrun, this
    process's share of them. Taking every core while another job runs makes each step wait on threads that
    cannot run (measured in benchmarks/threads.py: several times slower than one thread)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, int(cores - busy + 0.5) // local)


def configure_threads(threads: int | str | None = None) -> int:
    """Set torch's CPU threads: ``threads``, else $ROBNETS_THREADS, else :func:`default_threads`; returns it."""
    value = threads if threads is not None else (os.environ.get(THREADS_ENV) or None)
    if value is None:
        count = default_threads()
    else:
        try:
            count = int(value)
        except (TypeError, ValueError):
            count = 0
        if count < 1:
            where = f"${THREADS_ENV}" if threads is None else "--threads"
            raise RobnetsError(f"{where} must be a positive whole number of CPU threads, got {value!r}")
    torch.set_num_threads(count)
    return count
