"""Choosing the execution path: the fast engine where it applies, the plain model everywhere else."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

import torch
from torch import nn

from ..errors import RobnetsError
from ..models.network import RobNet
from .fast_robnet import FastRobNet

EXECUTION_MODES = ("fast", "plain")


def triton_usable(device: torch.device) -> bool:
    """Fused Triton kernels run on CUDA (or on CPU under TRITON_INTERPRET=1, for tests only)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        from .triton_sepconv import triton_available
    except ImportError:
        return False
    return triton_available()


def kernels_from_environment() -> str | None:
    """``ROBNETS_FAST_KERNELS``: 'torch', 'triton', 'tuned' or unset/'auto' (None)."""
    value = os.environ.get("ROBNETS_FAST_KERNELS", "auto").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("torch", "triton", "tuned"):
        raise RobnetsError(f"ROBNETS_FAST_KERNELS must be auto, torch, triton or tuned, got {value!r}")
    return value


def triton_configs_from_environment() -> tuple | None:
    """``ROBNETS_TRITON_CONFIG``: the fused kernels' tiling as ``LABEL`` (forward and backward) or
    ``FORWARD,BACKWARD`` labels such as ``p64-ci64-co64-w4-s1-split`` (see ``benchmarks/sepconv_kernels.py``);
    unset: the library's default. Returns (forward, backward) KernelConfigs or None."""
    value = os.environ.get("ROBNETS_TRITON_CONFIG", "").strip()
    if not value:
        return None
    from .triton_sepconv import KernelConfig

    labels = [v.strip() for v in value.split(",")]
    if len(labels) > 2:
        raise RobnetsError(f"ROBNETS_TRITON_CONFIG takes one label or two (forward,backward), got {value!r}")
    try:
        configs = [KernelConfig.from_label(label) for label in labels]
    except ValueError as exc:
        raise RobnetsError(f"ROBNETS_TRITON_CONFIG: {exc}") from None
    return configs[0], configs[-1]


def cuda_graphs_enabled(device: torch.device | str) -> bool:
    """CUDA graphs for the attack loop on CUDA devices, unless ``ROBNETS_CUDA_GRAPHS=0``."""
    return torch.device(device).type == "cuda" and os.environ.get("ROBNETS_CUDA_GRAPHS", "1").strip() != "0"


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


def accelerate(model: nn.Module, device: torch.device | str | None = None, *, kernels: str = "auto",
               channels_last: bool = True, compile: bool | None = None) -> tuple[nn.Module, str]:  # noqa: A002
    """Return (model to run, description). RobNets get a :class:`FastRobNet`; other models run as they are.

    ``kernels='auto'`` uses PyTorch's kernels (cuDNN on CUDA). The fused Triton kernels are opt-in
    (``kernels='triton'`` or ``ROBNETS_FAST_KERNELS=triton``): on an H200 (torch 2.11, Triton 3.6) they are as
    accurate as cuDNN but 15-25x slower in steady state (PGD-20 23 images/s against 165;
    results/gpu-h200-2026-11-26-issue3.md), so they are never chosen automatically. ``kernels='tuned'``
    (``ROBNETS_FAST_KERNELS=tuned``) times cuDNN and several Triton tilings on each half's shape the first time it
    runs and keeps the fastest per direction (:mod:`robnets.acceleration.tuning`; choices cached on disk):
    opt-in until a GPU measurement shows it ahead end to end.

    ``compile=True`` (or ``ROBNETS_COMPILE=1``) runs the fast path through ``torch.compile`` to fuse its
    element-wise work: PGD-20 1.46x faster than the eager fast path on an H200 (241 against 165 images/s,
    fp32), after 1-2 minutes of compilation per model and batch shape (about 3 on 2 CPU cores, where it gains
    only 1.06x). Opt-in because the compilation outweighs the gain on short runs. One compiled engine is kept
    per model. ``ROBNETS_COMPILE_BACKEND`` names another ``torch.compile`` backend (``eager``, ``aot_eager``:
    graph capture without Inductor, for debugging).
    """
    if not isinstance(model, RobNet):
        return model, f"plain ({type(model).__name__}: no fast path, running as is)"
    if device is None:
        param = next(model.parameters())
        device = param.device
    device = torch.device(device)
    if kernels == "auto":
        kernels = kernels_from_environment() or "torch"
    if compile is None:
        compile = compile_from_environment()
    if kernels in ("triton", "tuned") and not triton_usable(device):
        raise RobnetsError(f"{kernels} Triton kernels were asked for but cannot run on {device} (they need Triton "
                           "and a CUDA GPU); unset ROBNETS_FAST_KERNELS or use kernels='torch'")
    layout = "channels-last" if channels_last else "NCHW"
    description = f"fast (zero edges skipped, BatchNorm folded, shared ReLUs, {layout}, {kernels} kernels"
    if compile:
        engines = _COMPILED_ENGINES.setdefault(model, {})
        fast = engines.get((channels_last, kernels))
        if fast is None:
            fast = engines[(channels_last, kernels)] = FastRobNet(model, channels_last=channels_last, kernels=kernels,
                                                                  compile=compile_backend_from_environment())
        return fast.train(model.training), description + ", torch.compile)"
    fast = FastRobNet(model, channels_last=channels_last, kernels=kernels).train(model.training)
    return fast, description + ")"
