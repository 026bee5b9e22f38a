"""CW-L∞: PGD on the Carlini-Wagner margin loss (Carlini & Wagner 2017; L∞ form as in Madry et al.)."""

from __future__ import annotations

import torch
from torch import nn

from .pgd import PGD


def margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """Per-sample max_{j≠y} z_j - z_y, floored at -kappa (positive once misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return torch.clamp(other.amax(1) - true, min=-kappa)


class CWLinf(PGD):
    """PGD ascending the CW margin instead of cross-entropy.

    Threat model: L∞, radius ``eps``.
    Arguments: ``eps=8/255``, ``alpha=0.8/255``, ``steps=30``, ``kappa=0`` (confidence), ``random_start``;
    ``targeted`` (y are targets: the margin of the target over the rest is raised); ``precision``; ``seed``.
    Shapes: x float (N, C, H, W) in [0, 1], y long (N,) -> x_adv like x.
    Example: ``CWLinf(model, eps=8/255, steps=30)(x, y)``.
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 0.8 / 255, steps: int = 30,
                 kappa: float = 50.0, random_start: bool = True, **kwargs) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, **kwargs)
        self.kappa = float(kappa)

    def describe(self) -> dict:
        return {**super().describe(), "loss": "cw_margin", "kappa": self.kappa}

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        margin = margin_loss(logits.float(), y, self.kappa)
        # targeted: Attack.input_gradient flips the sign, so minimizing "others minus target" raises the target
        return margin.sum()
