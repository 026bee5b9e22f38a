"""Sanity checks for a robustness evaluation (after AutoAttack's checks and Carlini et al. 2019, "On
evaluating adversarial robustness"). Each check returns a :class:`SanityFlag` that explains itself in one
line; a fired flag means the reported robust accuracy should not be trusted as it stands.

``quick`` (default, a few forward/backward passes): model left in train mode, clean accuracy at or below
chance, randomized outputs, probabilities instead of logits, zero input gradients, ε = 0 giving clean accuracy.
``full`` adds: accuracy non-increasing in ε and in the number of steps, a very large ε driving accuracy to
~0, and a black-box attack (Square) beating the white-box PGD (a sign of gradient masking).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import PGD
from ..runtime import autocast_context, eval_mode

LEVELS = ("off", "quick", "full")


@dataclass
class SanityFlag:
    name: str
    fired: bool
    message: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f"[{'FLAG' if self.fired else 'ok'}] {self.name}: {self.message}"


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> float:
    with torch.no_grad(), autocast_context(x.device, precision):
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def check_chance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str,
                 num_classes: int | None = None) -> SanityFlag:
    """Clean accuracy at or below chance: untrained or wrong weights, a label order or input scaling the model
    was not trained for; a robust accuracy measured on such a model says nothing."""
    classes = num_classes or int(y.max().item()) + 1
    with eval_mode(model):
        clean = _accuracy(model, x, y, precision)
    chance = 100.0 / max(classes, 1)
    detail = {"clean": clean, "chance": chance, "n": len(y)}
    if clean <= chance:
        return SanityFlag("chance_level", True, f"clean accuracy {clean:.1f}% on the first {len(y)} images is at or "
                          f"below chance ({chance:.1f}% for {classes} classes): untrained or mismatched weights, "
                          f"or inputs/labels the model was not trained for; robust accuracy means nothing here",
                          detail)
    return SanityFlag("chance_level", False, f"clean accuracy {clean:.1f}% is above chance ({chance:.1f}%)", detail)


def check_train_mode(model: nn.Module) -> SanityFlag:
    training = sorted({type(m).__name__ for m in model.modules() if m.training})
    if training:
        return SanityFlag("train_mode", True, f"the model was handed over in train mode ({', '.join(training[:4])}); "
                          f"BatchNorm/dropout then use batch statistics, so attacks are weak and noisy; the "
                          f"evaluation switched to eval mode", {"modules_in_train_mode": training})
    return SanityFlag("train_mode", False, "the model is in eval mode")


def check_randomness(model: nn.Module, x: torch.Tensor, precision: str) -> SanityFlag:
    with eval_mode(model), torch.no_grad(), autocast_context(x.device, precision):
        a, b = model(x).float(), model(x).float()
    diff = (a - b).abs().max().item()
    if diff > 1e-4 * max(1.0, a.abs().max().item()):
        return SanityFlag("randomized_outputs", True, f"two forward passes on the same input differ (max "
                          f"{diff:.3g}); use EOT attacks (version='rand') or the numbers overstate robustness",
                          {"max_difference": diff})
    return SanityFlag("randomized_outputs", False, "the model is deterministic", {"max_difference": diff})


def check_probabilities(model: nn.Module, x: torch.Tensor, precision: str) -> SanityFlag:
    with eval_mode(model), torch.no_grad(), autocast_context(x.device, precision):
        out = model(x).float()
    looks = bool((out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(out), device=out.device), atol=1e-3))
    if looks:
        return SanityFlag("probability_outputs", True, "outputs are non-negative and sum to 1: the model returns "
                          "probabilities, not logits; cross-entropy attacks then saturate (remove the softmax)")
    return SanityFlag("probability_outputs", False, "outputs look like logits")


def check_zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> SanityFlag:
    with eval_mode(model):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad(), autocast_context(x.device, precision):
            loss = F.cross_entropy(model(xg).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [xg])
    zero = (grad.flatten(1).abs().amax(1) == 0).float().mean().item()
    if zero > 0.01:
        return SanityFlag("zero_gradients", True, f"{100 * zero:.1f}% of inputs have an all-zero input gradient: "
                          f"gradient-based attacks cannot move them (gradient masking or saturated softmax)",
                          {"fraction": zero})
    return SanityFlag("zero_gradients", False, f"{100 * zero:.1f}% of inputs have an all-zero gradient",
                      {"fraction": zero})


def check_eps_zero(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> SanityFlag:
    clean = _accuracy(model, x, y, precision)
    with eval_mode(model):
        x_adv = PGD(model, eps=0.0, alpha=1e-3, steps=2, precision=precision)(x, y)
        adv = _accuracy(model, x_adv, y, precision)
    if abs(adv - clean) > 1e-9:
        return SanityFlag("eps_zero", True, f"an attack with eps = 0 changed accuracy ({clean:.2f}% -> {adv:.2f}% on {len(y)} images): "
                          f"the attack or the model input handling is broken", {"clean": clean, "eps0": adv})
    return SanityFlag("eps_zero", False, f"eps = 0 gives the clean accuracy ({clean:.2f}% on the first {len(y)} "
                      f"images, those the sanity checks use)")


def _pgd_acc(model, x, y, eps, steps, precision, seed=0) -> float:  # noqa: ANN001
    with eval_mode(model):
        x_adv = PGD(model, eps=eps, alpha=max(eps / 4, 1e-6), steps=steps, precision=precision, seed=seed)(x, y)
        return _accuracy(model, x_adv, y, precision)


def check_monotone_eps(model, x, y, eps, precision, tolerance) -> SanityFlag:  # noqa: ANN001
    radii = [eps / 2, eps, 2 * eps]
    accs = [_pgd_acc(model, x, y, r, 10, precision) for r in radii]
    rises = any(b > a + tolerance for a, b in zip(accs, accs[1:]))
    detail = {"eps": radii, "accuracy": accs}
    text = ", ".join(f"{a:.1f}%" for a in accs)
    if rises:
        return SanityFlag("monotone_in_eps", True, f"accuracy rises with eps ({text} at eps/2, eps, 2eps): the "
                          f"attack fails to optimize (gradient masking?)", detail)
    return SanityFlag("monotone_in_eps", False, f"accuracy falls with eps ({text})", detail)


def check_monotone_steps(model, x, y, eps, precision, tolerance) -> SanityFlag:  # noqa: ANN001
    few, many = _pgd_acc(model, x, y, eps, 5, precision), _pgd_acc(model, x, y, eps, 50, precision)
    detail = {"pgd5": few, "pgd50": many}
    if many > few + tolerance:
        return SanityFlag("monotone_in_steps", True, f"PGD-50 leaves more points robust than PGD-5 ({many:.1f}% vs "
                          f"{few:.1f}%): the attack does not converge", detail)
    return SanityFlag("monotone_in_steps", False, f"more steps do not help the model (PGD-5 {few:.1f}%, PGD-50 "
                      f"{many:.1f}%)", detail)


def check_large_eps(model, x, y, precision, threshold: float = 5.0) -> SanityFlag:  # noqa: ANN001
    acc = _pgd_acc(model, x, y, 0.5, 20, precision)
    if acc > threshold:
        return SanityFlag("large_eps", True, f"with eps = 0.5 (any image within reach) {acc:.1f}% stay correct: "
                          f"gradients do not lead the attack (gradient masking)", {"accuracy": acc})
    return SanityFlag("large_eps", False, f"eps = 0.5 drives accuracy to {acc:.1f}%", {"accuracy": acc})


def check_black_box(model, x, y, eps, precision, tolerance, queries: int = 1000) -> SanityFlag:  # noqa: ANN001
    from ..attacks import Square

    white = _pgd_acc(model, x, y, eps, 20, precision)
    with eval_mode(model):
        x_adv = Square(model, eps=eps, n_queries=queries, seed=0, precision=precision)(x, y)
        black = _accuracy(model, x_adv, y, precision)
    detail = {"pgd20": white, "square": black, "queries": queries}
    if black < white - tolerance:
        return SanityFlag("black_box_vs_white_box", True, f"black-box Square ({queries} queries) beats white-box "
                          f"PGD-20 ({black:.1f}% vs {white:.1f}%): gradients are misleading (gradient masking)",
                          detail)
    return SanityFlag("black_box_vs_white_box", False, f"white-box PGD-20 ({white:.1f}%) is at least as strong as "
                      f"Square ({black:.1f}%)", detail)


def run_sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
                      level: str = "quick", precision: str = "fp32", num_classes: int | None = None,
                      log: Callable[[str], None] | None = None) -> list[SanityFlag]:
    """Run the checks of ``level`` on the batch (x, y); the model's modes are left as they were."""
    if level == "off":
        return []
    if level not in LEVELS:
        raise ValueError(f"sanity level must be one of {LEVELS}")
    tolerance = 100.0 / len(y) + 1e-9  # one example
    flags = [check_train_mode(model)]
    with eval_mode(model):
        flags += [check_chance(model, x, y, precision, num_classes),
                  check_randomness(model, x, precision), check_probabilities(model, x, precision),
                  check_zero_gradients(model, x, y, precision), check_eps_zero(model, x, y, precision)]
        if level == "full":
            flags += [check_monotone_eps(model, x, y, eps, precision, tolerance),
                      check_monotone_steps(model, x, y, eps, precision, tolerance),
                      check_large_eps(model, x, y, precision),
                      check_black_box(model, x, y, eps, precision, tolerance)]
    if log is not None:
        for flag in flags:
            log(flag.line())
    return flags
