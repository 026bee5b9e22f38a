"""PGD-L2: normalized-gradient steps projected onto the L2 ball."""

from __future__ import annotations

import torch
from torch import nn

from .base import L2Attack, check_steps


class PGDL2(L2Attack):
    """Projected Gradient Descent under the L2 threat model.

    Threat model: L2, radius ``eps`` (per image).
    Arguments: ``eps=0.5``, ``alpha=0.1`` (L2 length of each step), ``steps=20``, ``random_start=True``
    (a point drawn uniformly in radius from a random direction); ``targeted``; ``precision``; ``seed``.
    Shapes: x float (N, C, H, W) in [0, 1], y long (N,) -> x_adv like x.
    Example: ``PGDL2(model, eps=0.5, alpha=0.1, steps=20)(x, y)``.
    """

    def __init__(self, model: nn.Module, eps: float = 0.5, alpha: float = 0.1, steps: int = 20,
                 random_start: bool = True, **kwargs) -> None:
        super().__init__(model, eps, **kwargs)
        check_steps(steps, alpha)
        self.alpha = float(alpha)
        self.steps = steps
        self.random_start = bool(random_start)

    def describe(self) -> dict:
        return {**super().describe(), "alpha": self.alpha, "steps": self.steps, "random_start": self.random_start}

    @staticmethod
    def _unit(v: torch.Tensor) -> torch.Tensor:
        return v / v.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        if self.random_start and self.eps > 0:
            radius = self.uniform_like(x[:, :1, :1, :1], 0.0, 1.0) * self.eps
            x_adv = self.project(x + self._unit(self.normal_like(x)) * radius, x)
        for _ in range(self.steps):
            grad = self.input_gradient(x_adv, y)
            x_adv = self.project(x_adv + self.alpha * self._unit(grad), x)
        return x_adv
