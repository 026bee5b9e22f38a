"""PGD-L∞ (Madry et al., 2018): iterated signed-gradient steps projected onto the ε-ball."""

from __future__ import annotations

import torch
from torch import nn

from .base import LinfAttack, check_steps


class PGD(LinfAttack):
    """Projected Gradient Descent under the L∞ threat model.

    Threat model: L∞, radius ``eps``.
    Arguments: ``eps=8/255``, ``alpha=2/255`` (step size), ``steps=20``, ``random_start=True`` (uniform
    start in the ε-ball, clipped to [0, 1]); ``targeted=False``; ``precision='fp32'|'bf16'``; ``seed``.
    Shapes: x float (N, C, H, W) in [0, 1], y long (N,) -> x_adv like x.
    ``cuda_graphs=True`` replays the step as a captured CUDA graph for CUDA inputs (same arithmetic, fewer
    launches); it is ignored on CPU.
    Example: ``PGD(model, eps=8/255, alpha=2/255, steps=20)(x, y)`` is the RobNets CIFAR-10 evaluation.
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 20,
                 random_start: bool = True, cuda_graphs: bool = False, **kwargs) -> None:
        super().__init__(model, eps, **kwargs)
        check_steps(steps, alpha)
        self.alpha = float(alpha)
        self.steps = steps
        self.random_start = bool(random_start)
        self.cuda_graphs = bool(cuda_graphs)
        self._graphs = None

    def describe(self) -> dict:
        return {**super().describe(), "alpha": self.alpha, "steps": self.steps, "random_start": self.random_start}

    def start(self, x: torch.Tensor) -> torch.Tensor:
        if self.random_start and self.eps > 0:
            return (x + self.uniform_like(x, -self.eps, self.eps)).clamp_(0.0, 1.0)
        return x.clone()

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.start(x)
        plain_loss = type(self).loss is LinfAttack.loss  # the captured step computes cross-entropy
        if self.cuda_graphs and plain_loss and x.is_cuda and self.steps > 0:
            from ..acceleration.cuda_graphs import GraphCache

            self._graphs = self._graphs or GraphCache()
            step = self._graphs.get(self.model, x, y, eps=self.eps, alpha=self.alpha, precision=self.precision,
                                    targeted=self.targeted)
            return step.run(x, y, x_adv, self.steps)
        for _ in range(self.steps):
            grad = self.input_gradient(x_adv, y)
            x_adv = self.project(x_adv + self.alpha * grad.sign(), x)
        return x_adv
