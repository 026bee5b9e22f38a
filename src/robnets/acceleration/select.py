"""Choosing the execution path: the fast engine where it applies, the plain model everywhere else."""

from __future__ import annotations

import os

import torch
from torch import nn

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


def accelerate(model: nn.Module, device: torch.device | str | None = None, *, kernels: str = "auto",
               channels_last: bool = True) -> tuple[nn.Module, str]:
    """Return (model to run, description). RobNets get a :class:`FastRobNet`; other models run as they are.

    ``kernels='auto'`` uses fused Triton kernels on CUDA when Triton is installed, PyTorch ops otherwise.
    """
    if not isinstance(model, RobNet):
        return model, f"plain ({type(model).__name__}: no fast path, running as is)"
    if device is None:
        param = next(model.parameters())
        device = param.device
    device = torch.device(device)
    if kernels == "auto":
        kernels = "triton" if triton_usable(device) else "torch"
    fast = FastRobNet(model, channels_last=channels_last, kernels=kernels).train(model.training)
    layout = "channels-last" if channels_last else "NCHW"
    return fast, f"fast (zero edges skipped, BatchNorm folded, shared ReLUs, {layout}, {kernels} kernels)"
