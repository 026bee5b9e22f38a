"""Adversarial training methods: how each batch's training inputs and loss are made.

* ``pgd``: PGD-k with random start (Madry et al. 2018; the RobNets recipe is PGD-7, step 2/255);
* ``fgsm_rs``: FGSM from a uniform random start, step 1.25 ε, projected (Wong et al. 2020, "fast is
  better than free");
* ``nfgsm``: noise from U(-2ε, 2ε), one FGSM step of size ε, not projected back (de Jorge et al. 2022);
* ``trades``: CE on clean inputs + β · KL(f(x_adv) ‖ f(x)), x_adv maximizing that KL (Zhang et al. 2019);
* ``standard``: no attack (clean training).

Attacks run on ``attack_model`` (the unwrapped, possibly fast, model) in eval mode unless
``attack_train_mode`` is set (the original ran its attack with the network in train mode). The training
forward then runs once on the result, so DDP sees exactly one forward per backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import PGD
from ..errors import RobnetsError
from ..runtime import autocast_context, eval_mode

METHODS = ("pgd", "fgsm_rs", "nfgsm", "trades", "standard")
SINGLE_STEP = ("fgsm_rs", "nfgsm")


@dataclass
class MethodSettings:
    name: str = "pgd"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 7
    fgsm_step: float = 1.25  # × eps, FGSM-RS
    nfgsm_noise: float = 2.0  # × eps
    nfgsm_step: float = 1.0  # × eps
    trades_beta: float = 6.0
    precision: str = "fp32"
    attack_train_mode: bool = False

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise RobnetsError(f"unknown training method {self.name!r}; use one of {', '.join(METHODS)}")


def _input_grad(model: nn.Module, x: torch.Tensor, loss_fn, precision: str) -> torch.Tensor:  # noqa: ANN001
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), autocast_context(x.device, precision):
        logits = model(x)
    (grad,) = torch.autograd.grad(loss_fn(logits.float()), [x])
    return grad.detach()


def _with_mode(model: nn.Module, train_mode: bool):  # noqa: ANN202
    if train_mode:
        import contextlib

        return contextlib.nullcontext(model)
    return eval_mode(model)


def nfgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: MethodSettings,
          generator: torch.Generator | None = None) -> torch.Tensor:
    noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * (s.nfgsm_noise * s.eps)
    start = (x + noise).clamp(0.0, 1.0)
    grad = _input_grad(model, start, lambda logits: F.cross_entropy(logits, y, reduction="sum"), s.precision)
    return (start + s.nfgsm_step * s.eps * grad.sign()).clamp(0.0, 1.0).detach()


def trades_adversary(model: nn.Module, x: torch.Tensor, s: MethodSettings,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    with torch.no_grad(), autocast_context(x.device, s.precision):
        clean_prob = F.softmax(model(x).float(), dim=1)
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)).clamp(0, 1)
    kl = lambda logits: F.kl_div(F.log_softmax(logits, 1), clean_prob, reduction="sum")  # noqa: E731
    for _ in range(s.steps):
        grad = _input_grad(model, x_adv, kl, s.precision)
        x_adv = x_adv + s.step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - s.eps), x + s.eps).clamp(0.0, 1.0)
    return x_adv.detach()


def make_inputs(attack_model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: MethodSettings,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Training inputs for this batch: adversarial examples (or ``x`` itself for 'standard')."""
    if s.name == "standard":
        return x
    with _with_mode(attack_model, s.attack_train_mode):
        if s.name == "nfgsm":
            return nfgsm(attack_model, x, y, s, generator)
        if s.name == "trades":
            return trades_adversary(attack_model, x, s, generator)
        if s.name == "fgsm_rs":
            attack = PGD(attack_model, eps=s.eps, alpha=s.fgsm_step * s.eps, steps=1, precision=s.precision)
        else:
            attack = PGD(attack_model, eps=s.eps, alpha=s.step_size, steps=s.steps, precision=s.precision)
        attack.generator = lambda device: generator  # type: ignore[method-assign]  # the trainer's stream
        return attack.perturb(x, y) if s.attack_train_mode else attack(x, y)


def training_loss(model: nn.Module, x: torch.Tensor, x_in: torch.Tensor, y: torch.Tensor,
                  s: MethodSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits on the training inputs) with ONE forward of ``model`` (DDP-safe)."""
    with autocast_context(x.device, s.precision):
        if s.name == "trades":
            logits = model(torch.cat([x, x_in]))
        else:
            logits = model(x_in)
    logits = logits.float()
    if s.name == "trades":
        clean, adv = logits.split(x.shape[0])
        loss = F.cross_entropy(clean, y) + s.trades_beta * F.kl_div(
            F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="batchmean")
        return loss, adv
    return F.cross_entropy(logits, y), logits
