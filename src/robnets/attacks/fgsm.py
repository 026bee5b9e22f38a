"""FGSM (Goodfellow et al., 2015): one signed-gradient step of size eps."""

from __future__ import annotations

import torch
from torch import nn

from .base import LinfAttack


class FGSM(LinfAttack):
    """Fast Gradient Sign Method.

    Threat model: L∞, radius ``eps``.
    Arguments: ``eps=8/255``; ``targeted=False``; ``precision='fp32'|'bf16'``.
    Shapes: x float (N, C, H, W) in [0, 1], y long (N,) -> x_adv like x.
    Example: ``FGSM(model, eps=8/255)(x, y)``.
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, **kwargs) -> None:
        super().__init__(model, eps, **kwargs)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grad = self.input_gradient(x, y)
        return self.project(x + self.eps * grad.sign(), x)
