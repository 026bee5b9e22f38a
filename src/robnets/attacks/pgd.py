"""PGD-L∞ (Madry et al., 2018): iterated signed-gradient steps projected onto the ε-ball."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .base import LinfAttack, check_steps

StepLoop = Callable[..., torch.Tensor]


class PGD(LinfAttack):
    """Projected Gradient Descent under the L∞ threat model.

    Threat model: L∞, radius ``eps``.
    Arguments: ``eps=8/255``, ``alpha=2/255`` (step size), ``steps=20``, ``random_start=True`` (uniform
    start in the ε-ball, clipped to [0, 1]); ``targeted=False``; ``precision='fp32'|'bf16'``; ``seed``.
    Shapes: x float (N, C, H, W) in [0, 1], y long (N,) -> x_adv like x.
    ``step_loop``: an optional runner of the step loop with the same arithmetic, called as
    ``step_loop(model, x, y, start, steps, eps=, alpha=, precision=, targeted=)`` for CUDA inputs (the fast
    path hands in :class:`robnets.acceleration.GraphedPGDLoop`, which replays the step as a CUDA graph).
    Example: ``PGD(model, eps=8/255, alpha=2/255, steps=20)(x, y)`` is the RobNets CIFAR-10 evaluation.
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 20,
                 random_start: bool = True, step_loop: StepLoop | None = None, **kwargs) -> None:
        super().__init__(model, eps, **kwargs)
        check_steps(steps, alpha)
        self.alpha = float(alpha)
        self.steps = steps
        self.random_start = bool(random_start)
        self.step_loop = step_loop

    def describe(self) -> dict:
        return {**super().describe(), "alpha": self.alpha, "steps": self.steps, "random_start": self.random_start}

    def start(self, x: torch.Tensor) -> torch.Tensor:
        if self.random_start and self.eps > 0:
            return (x + self.uniform_like(x, -self.eps, self.eps)).clamp_(0.0, 1.0)
        return x.clone()

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.start(x)
        plain_loss = type(self).loss is LinfAttack.loss  # the captured step computes cross-entropy
        if self.step_loop is not None and plain_loss and x.is_cuda and self.steps > 0:
            return self.step_loop(self.model, x, y, x_adv, self.steps, eps=self.eps, alpha=self.alpha,
                                  precision=self.precision, targeted=self.targeted)
        for _ in range(self.steps):
            grad = self.input_gradient(x_adv, y)
            x_adv = self.project(x_adv + self.alpha * grad.sign(), x)
        return x_adv
