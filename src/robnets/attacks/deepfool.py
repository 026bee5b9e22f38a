"""DeepFool (Moosavi-Dezfooli et al. 2016), L∞ variant, with the perturbation bounded by eps for
robust-accuracy evaluation (as in the RobNets paper's Table 1)."""

from __future__ import annotations

import torch
from torch import nn

from .base import LinfAttack, check_steps


class DeepFool(LinfAttack):
    """Iterated linearization toward the closest decision boundary among the top ``candidates`` classes.

    Threat model: L∞; the minimal perturbation found is clipped to radius ``eps`` (points whose boundary
    lies farther than eps stay correctly classified).
    Arguments: ``eps=8/255``, ``steps=50``, ``overshoot=0.02``, ``candidates=10``; ``precision``.
    Shapes: x float (N, C, H, W) in [0, 1], y long (N,) -> x_adv like x.
    Example: ``DeepFool(model, eps=8/255)(x, y)``.
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, steps: int = 50, overshoot: float = 0.02,
                 candidates: int = 10, **kwargs) -> None:
        super().__init__(model, eps, **kwargs)
        check_steps(steps, 1.0)
        self.steps, self.overshoot, self.candidates = steps, float(overshoot), int(candidates)

    def describe(self) -> dict:
        return {**super().describe(), "steps": self.steps, "overshoot": self.overshoot,
                "candidates": self.candidates}

    def _logits_and_jacobian(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, K) of the chosen classes and their input gradients (N, K, C, H, W)."""
        from ..runtime import autocast_context

        x = x.detach().requires_grad_(True)
        with torch.enable_grad(), autocast_context(x.device, self.precision):
            logits = self.model(x).float()
        chosen = logits.gather(1, classes)
        grads = []
        for k in range(classes.shape[1]):
            (g,) = torch.autograd.grad(chosen[:, k].sum(), [x], retain_graph=k < classes.shape[1] - 1)
            grads.append(g)
        return chosen.detach(), torch.stack(grads, 1)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from ..runtime import autocast_context

        with torch.no_grad(), autocast_context(x.device, self.precision):
            logits = self.model(x).float()
        k = min(self.candidates, logits.shape[1])
        others = logits.scatter(1, y[:, None], float("-inf")).topk(k - 1, dim=1).indices
        classes = torch.cat([y[:, None], others], 1)  # column 0: the true class
        r_total = torch.zeros_like(x)
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            if not active.any():
                break
            idx = active.nonzero().squeeze(1)
            x_cur = (x[idx] + (1 + self.overshoot) * r_total[idx]).clamp(0, 1)
            f, jac = self._logits_and_jacobian(x_cur, classes[idx])
            still = f[:, 1:].amax(1) <= f[:, 0]
            active[idx[~still]] = False
            if not still.any():
                break
            f, jac, idx = f[still], jac[still], idx[still]
            w = jac[:, 1:] - jac[:, :1]  # (n, K-1, C, H, W)
            gap = (f[:, 1:] - f[:, :1]).abs()  # (n, K-1)
            dist = gap / w.flatten(2).abs().sum(2).clamp_min(1e-12)  # L∞ distance via the dual (L1) norm
            best = dist.argmin(1)
            w_best = w[torch.arange(len(idx), device=x.device), best]
            step = (dist[torch.arange(len(idx)), best] + 1e-4).view(-1, 1, 1, 1) * w_best.sign()
            r_total[idx] = r_total[idx] + step
        return self.project(x + (1 + self.overshoot) * r_total, x)
