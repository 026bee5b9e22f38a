"""Attack base class (shape after torchattacks): ``atk = PGD(model, eps=8/255, ...); x_adv = atk(x, y)``.

What every attack guarantees:

* the model runs in eval mode during the attack and every submodule's mode is restored afterwards;
* ``x_adv`` is detached, has the input's device and dtype, stays inside [0, 1] and inside the threat
  model's ε-ball around ``x``;
* parameter gradients of the model are never touched (gradients are taken w.r.t. the input only);
* fp32 by default; ``precision='bf16'`` runs forward passes under bf16 autocast (loss in fp32);
* ``seed=...`` makes random starts reproducible (a generator per device, advanced call by call).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RobnetsError
from ..runtime import autocast_context, check_precision, eval_mode


def check_steps(steps: object, alpha: float) -> None:
    """Validate the iteration count and step size shared by iterative attacks."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise RobnetsError(f"steps must be a non-negative integer, got {steps!r}")
    if not alpha > 0:
        raise RobnetsError(f"alpha (step size) must be > 0, got {alpha}")


def check_inputs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Validate an attack's inputs; return labels on the input's device."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise RobnetsError(f"attack input must be a float NCHW tensor, got {shape}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise RobnetsError(f"labels must be a 1-D tensor with one label per image ({x.shape[0]}), "
                           f"got {tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    if x.numel():
        low, high = torch.aminmax(x.detach())
        if low.item() < 0.0 or high.item() > 1.0:
            raise RobnetsError(
                f"attack inputs must lie in [0, 1] (got min {low.item():.4g}, max {high.item():.4g}); "
                f"pass unnormalized images and put normalization inside the model"
            )
    return y.to(device=x.device, dtype=torch.long)


class Attack:
    """Base class. Subclasses implement :meth:`perturb` on validated inputs with the model in eval mode."""

    #: 'Linf' or 'L2'
    threat_model = "Linf"

    def __init__(self, model: nn.Module, eps: float, *, targeted: bool = False, precision: str = "fp32",
                 seed: int | None = None, eot_iter: int = 1) -> None:
        if not isinstance(model, nn.Module):
            raise RobnetsError(f"attacks need an nn.Module, got {type(model).__name__}")
        if not eps >= 0:
            raise RobnetsError(f"eps must be >= 0, got {eps}")
        self.model = model
        self.eps = float(eps)
        self.targeted = bool(targeted)
        self.precision = check_precision(precision)
        self.seed = seed
        if not isinstance(eot_iter, int) or eot_iter < 1:
            raise RobnetsError(f"eot_iter must be a positive integer, got {eot_iter!r}")
        self.eot_iter = eot_iter  # >1: Expectation over Transformation for randomized models
        self._generators: dict[str, torch.Generator] = {}

    # ------------------------------------------------------------------ public API
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return adversarial examples for images ``x`` (labels ``y``; target labels when targeted)."""
        y = check_inputs(x, y)
        if torch.is_inference_mode_enabled():
            raise RobnetsError(f"{type(self).__name__} needs input gradients, which torch.inference_mode() forbids: "
                               "call the attack outside inference_mode (torch.no_grad() is fine)")
        x = x.detach()
        # grad mode on: an attack called inside torch.no_grad() (a usual evaluation loop) still differentiates
        with eval_mode(self.model), torch.enable_grad():
            x_adv = self.perturb(x, y)
        return x_adv.detach()

    def set_seed(self, seed: int | None) -> None:
        """Restart the random stream (``None``: use torch's global generator)."""
        self.seed = seed
        self._generators.clear()

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"{type(self).__name__}({fields})"

    def describe(self) -> dict:
        """The attack's settings, for result files."""
        return {"threat_model": self.threat_model, "eps": self.eps, "targeted": self.targeted,
                "precision": self.precision, "seed": self.seed, "eot_iter": self.eot_iter}

    # ------------------------------------------------------------------ helpers for subclasses
    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def uniform_like(self, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        return noise * (high - low) + low

    def normal_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy (per-sample gradients do not depend on the batch size)."""
        return F.cross_entropy(logits.float(), y, reduction="sum")

    def input_gradient(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradient of the attack objective w.r.t. ``x_adv``; sign flipped for targeted attacks so that
        ascending it always moves toward success."""
        x_adv = x_adv.detach().requires_grad_(True)
        grad = torch.zeros_like(x_adv)
        for _ in range(self.eot_iter):  # EOT: average the gradient over the model's randomness
            with torch.enable_grad(), autocast_context(x_adv.device, self.precision):
                logits = self.model(x_adv)
            loss = self.loss(logits, y)
            (g,) = torch.autograd.grad(loss, [x_adv])
            grad += g.detach().to(x_adv.dtype)
        grad /= self.eot_iter
        return -grad if self.targeted else grad


class LinfAttack(Attack):
    threat_model = "Linf"

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Back into the L∞ ball of radius eps around x, and into [0, 1]."""
        return torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp_(0.0, 1.0)


class L2Attack(Attack):
    threat_model = "L2"

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Back into the L2 ball of radius eps around x, and into [0, 1]."""
        delta = x_adv - x
        norms = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = delta * torch.clamp(self.eps / norms, max=1.0)
        return (x + delta).clamp_(0.0, 1.0)
