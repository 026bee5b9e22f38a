"""Choosing the execution path: the fast engine where it applies, the plain model everywhere else."""

from __future__ import annotations

import os

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
    """``ROBNETS_FAST_KERNELS``: 'torch', 'triton' or unset/'auto' (None)."""
    value = os.environ.get("ROBNETS_FAST_KERNELS", "auto").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("torch", "triton"):
        raise RobnetsError(f"ROBNETS_FAST_KERNELS must be auto, torch or triton, got {value!r}")
    return value


def cuda_graphs_enabled(device: torch.device | str) -> bool:
    """CUDA graphs for the attack loop on CUDA devices, unless ``ROBNETS_CUDA_GRAPHS=0``."""
    return torch.device(device).type == "cuda" and os.environ.get("ROBNETS_CUDA_GRAPHS", "1").strip() != "0"


def accelerate(model: nn.Module, device: torch.device | str | None = None, *, kernels: str = "auto",
               channels_last: bool = True) -> tuple[nn.Module, str]:
    """Return (model to run, description). RobNets get a :class:`FastRobNet`; other models run as they are.

    ``kernels='auto'`` uses fused Triton kernels on CUDA when Triton is installed, PyTorch ops otherwise;
    the environment variable ``ROBNETS_FAST_KERNELS=torch|triton`` overrides that choice (e.g. where a
    benchmark showed PyTorch's kernels to be faster on a given GPU).
    """
    if not isinstance(model, RobNet):
        return model, f"plain ({type(model).__name__}: no fast path, running as is)"
    if device is None:
        param = next(model.parameters())
        device = param.device
    device = torch.device(device)
    if kernels == "auto":
        kernels = kernels_from_environment() or ("triton" if triton_usable(device) else "torch")
    fast = FastRobNet(model, channels_last=channels_last, kernels=kernels).train(model.training)
    layout = "channels-last" if channels_last else "NCHW"
    return fast, f"fast (zero edges skipped, BatchNorm folded, shared ReLUs, {layout}, {kernels} kernels)"
