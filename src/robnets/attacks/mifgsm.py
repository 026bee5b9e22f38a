"""MI-FGSM (Dong et al., 2018): signed steps along an accumulated, L1-normalized gradient momentum."""

from __future__ import annotations

import torch
from torch import nn

from .base import LinfAttack, check_steps


class MIFGSM(LinfAttack):
    """Momentum Iterative FGSM.

    Threat model: L∞, radius ``eps``.
    Arguments: ``eps=8/255``, ``alpha=2/255``, ``steps=10``, ``decay=1.0`` (momentum factor μ);
    ``targeted``; ``precision``. No random start (as published).
    Shapes: x float (N, C, H, W) in [0, 1], y long (N,) -> x_adv like x.
    Example: ``MIFGSM(model, eps=8/255, alpha=2/255, steps=10)(x, y)``.
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 decay: float = 1.0, **kwargs) -> None:
        super().__init__(model, eps, **kwargs)
        check_steps(steps, alpha)
        self.alpha = float(alpha)
        self.steps = steps
        self.decay = float(decay)

    def describe(self) -> dict:
        return {**super().describe(), "alpha": self.alpha, "steps": self.steps, "decay": self.decay}

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        momentum = torch.zeros_like(x)
        for _ in range(self.steps):
            grad = self.input_gradient(x_adv, y)
            grad = grad / grad.abs().flatten(1).mean(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            momentum = self.decay * momentum + grad
            x_adv = self.project(x_adv + self.alpha * momentum.sign(), x)
        return x_adv
