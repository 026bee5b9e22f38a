"""Shared pieces of the AutoAttack attacks: norms, projections, losses, per-sample seeding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import RobnetsError
from ...runtime import autocast_context
from ..base import Attack
from ._rng import SampleRandom

NORMS = ("Linf", "L2")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise RobnetsError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return norm


def check_count(name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RobnetsError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a batch of perturbations, shape (N,)."""
    flat = delta.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return flat.norm(p=2, dim=1)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def normalize(v: torch.Tensor, norm: str) -> torch.Tensor:
    """v scaled to unit norm per sample (zero stays zero)."""
    return v / _view(lp_norm(v, norm) + 1e-12, v)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Into the ε-ball around x (in ``norm``), then into [0, 1]."""
    if norm == "Linf":
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
    delta = x_adv - x
    scale = torch.clamp(eps / lp_norm(delta, norm).clamp_min(1e-12), max=1.0)
    return (x + delta * _view(scale, delta)).clamp_(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, norm: str, rng: SampleRandom, stream: tuple[int, ...],
                 radius: float = 1.0) -> torch.Tensor:
    """A random point on the sphere of radius ``radius * eps`` (in ``norm``) around x, clipped to [0, 1].

    L∞: a uniform direction in the cube rescaled to L∞ norm eps; L2: a Gaussian direction rescaled to L2
    norm eps (the starting points of APGD and of FAB's restarts).
    """
    shape = tuple(x.shape[1:])
    if norm == "Linf":
        t = rng.uniform(stream, shape, dtype=x.dtype, device=x.device) * 2 - 1
    else:
        t = rng.normal(stream, shape, dtype=x.dtype, device=x.device)
    return (x + radius * eps * normalize(t, norm)).clamp_(0.0, 1.0)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{i != y} z_i (negative means misclassified)."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - others


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio, per sample: -(z_y - max_{i!=y} z_i) / (z_(1) - z_(3))."""
    logits = logits.float()
    top = logits.topk(3, dim=1).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_loss_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, per sample: -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)."""
    logits = logits.float()
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


class SampleSeededAttack(Attack):
    """Attack base whose random draws depend on (seed, sample id, stream) only.

    ``attack(x, y, sample_ids=idx)`` keys every draw of image ``i`` by ``idx[i]`` (its index in the whole
    evaluated set): the result for an image then does not depend on the batch it is in, which is how
    :class:`AutoAttack` calls it. Without ``sample_ids`` the images are numbered 0..N-1 and the call count is
    mixed in, so successive calls differ (``set_seed`` restarts the count). ``seed=None`` draws a fresh seed
    from torch's global generator at every call.
    """

    #: distinguishes the random streams of different attacks under the same seed
    salt: int = 0

    def __init__(self, model: nn.Module, eps: float, *, norm: str = "Linf", seed: int | None = 0,
                 precision: str = "fp32") -> None:
        super().__init__(model, eps, precision=precision, seed=seed)
        self.norm = check_norm(norm)
        self.threat_model = self.norm
        self._calls = 0
        self._rng: SampleRandom | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, sample_ids: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else 0
        if sample_ids is None:
            self._calls += 1
            epoch = self._calls
            ids = torch.arange(n, dtype=torch.int64)
        else:
            ids = torch.as_tensor(sample_ids)
            if ids.dim() != 1 or ids.shape[0] != n or ids.is_floating_point() or ids.dtype == torch.bool:
                raise RobnetsError(f"sample_ids must be a 1-D integer tensor with one id per image ({n}), "
                                   f"got {ids.dtype} {tuple(ids.shape)}")
            epoch = 0
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        device = x.device if isinstance(x, torch.Tensor) else None
        self._rng = SampleRandom(seed, ids.to(device=device, dtype=torch.int64), (self.salt, epoch))
        try:
            return super().__call__(x, y)
        finally:
            self._rng = None

    def set_seed(self, seed: int | None) -> None:
        super().set_seed(seed)
        self._calls = 0

    def sample_random(self, x: torch.Tensor) -> SampleRandom:
        """The random source for the batch being attacked (ids 0..N-1 when perturb is called directly)."""
        if self._rng is not None and len(self._rng) == x.shape[0]:
            return self._rng
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        return SampleRandom(seed, torch.arange(x.shape[0], device=x.device), (self.salt, 0))

    def describe(self) -> dict:
        return {**super().describe(), "norm": self.norm}

    # ------------------------------------------------------------------ model access
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Forward pass without gradients (under the chosen precision), fp32 logits."""
        with torch.no_grad(), autocast_context(x.device, self.precision):
            return self.model(x).float()

    def logits_with_input_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x with requires_grad, logits) inside grad mode, for the caller to differentiate."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad(), autocast_context(x.device, self.precision):
            out = self.model(x).float()
        return x, out


def num_classes_check(n_classes: int, needed: int, what: str) -> None:
    if n_classes < needed:
        raise RobnetsError(f"{what} needs a model with at least {needed} classes, this one has {n_classes}")
