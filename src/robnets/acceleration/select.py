"""Choosing the execution path: the fast engine where it applies, the plain model everywhere else."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

import torch
from torch import nn

from ..errors import RobnetsError
from ..models.network import RobNet
from .cuda_graphs import GraphedPGDLoop
from .fast_robnet import FastRobNet

EXECUTION_MODES = ("fast", "plain")


def cuda_graphs_enabled(device: torch.device | str) -> bool:
    """CUDA graphs for the attack loop on CUDA devices, unless ``ROBNETS_CUDA_GRAPHS=0``."""
    return torch.device(device).type == "cuda" and os.environ.get("ROBNETS_CUDA_GRAPHS", "1").strip() != "0"


def pgd_loop_for(device: torch.device | str) -> GraphedPGDLoop | None:
    """The captured-graph PGD step loop to hand to attacks on ``device`` (None: the attack's own loop)."""
    return GraphedPGDLoop() if cuda_graphs_enabled(device) else None


def compile_from_environment() -> bool:
    """``ROBNETS_COMPILE=1``: run the fast path through ``torch.compile`` (opt-in, see :func:`accelerate`)."""
    value = os.environ.get("ROBNETS_COMPILE", "0").strip().lower()
    if value not in ("0", "1", "", "false", "true"):
        raise RobnetsError(f"ROBNETS_COMPILE must be 0 or 1, got {value!r}")
    return value in ("1", "true")


def compile_backend_from_environment() -> str:
    """``ROBNETS_COMPILE_BACKEND``: the ``torch.compile`` backend of compiled paths (default ``inductor``;
    ``eager`` / ``aot_eager`` check the graph capture without Inductor's code generation)."""
    return os.environ.get("ROBNETS_COMPILE_BACKEND", "").strip() or "inductor"


def compile_for_training(module: nn.Module, backend: str | Callable | None = None) -> nn.Module:
    """``torch.compile`` a model for its training forward and backward (train mode: BatchNorm batch statistics,
    weight gradients), sharing its parameters, buffers and state dict with ``module``.

    The weight update of adversarial training is one forward and one weight-gradient backward of the source
    model; compiled, Inductor fuses BatchNorm, ReLU and the node sums around the convolutions, which the eager
    path runs as separate memory-bound kernels. ``dynamic=False``: training batches have one shape (the
    loader drops the last partial batch), and a new shape recompiles rather than running a slower dynamic
    graph. Works on a DistributedDataParallel wrapper too (compile it after wrapping, as PyTorch advises: its
    DDP optimizer splits the graph at gradient-bucket boundaries so communication still overlaps).
    ``backend`` defaults to ``ROBNETS_COMPILE_BACKEND`` or Inductor; ``eager`` / ``aot_eager`` check the graph
    capture without Inductor's code generation (debugging, tests).
    """
    return torch.compile(module, backend=backend or compile_backend_from_environment(), dynamic=False)


# One compiled engine per source model and settings: torch.compile caches per engine, so creating a fresh
# engine for every evaluation would recompile each time (minutes) and soon hit its recompilation limit.
_COMPILED_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def accelerate(model: nn.Module, device: torch.device | str | None = None, *, channels_last: bool = True,
               compile: bool | None = None) -> tuple[nn.Module, str]:  # noqa: A002
    """Return (model to run, description). RobNets get a :class:`FastRobNet`; other models run as they are.

    The fast path runs PyTorch's kernels (cuDNN on CUDA). ``compile=True`` (or ``ROBNETS_COMPILE=1``) runs it
    through ``torch.compile`` to fuse its element-wise work, after minutes of compilation per model and batch
    shape: opt-in because the compilation outweighs the gain on short runs (docs/performance.md). One compiled
    engine is kept per model. ``ROBNETS_COMPILE_BACKEND`` names another ``torch.compile`` backend (``eager``,
    ``aot_eager``: graph capture without Inductor, for debugging).
    """
    if not isinstance(model, RobNet):
        return model, f"plain ({type(model).__name__}: no fast path, running as is)"
    if device is None:
        param = next(model.parameters())
        device = param.device
    if compile is None:
        compile = compile_from_environment()
    layout = "channels-last" if channels_last else "NCHW"
    description = f"fast (zero edges skipped, BatchNorm folded, shared ReLUs, {layout}"
    if compile:
        engines = _COMPILED_ENGINES.setdefault(model, {})
        fast = engines.get(channels_last)
        if fast is None:
            fast = engines[channels_last] = FastRobNet(model, channels_last=channels_last,
                                                       compile=compile_backend_from_environment())
        return fast.train(model.training), description + ", torch.compile)"
    fast = FastRobNet(model, channels_last=channels_last).train(model.training)
    return fast, description + ")"
