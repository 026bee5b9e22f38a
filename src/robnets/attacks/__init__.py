"""Adversarial attacks with the torchattacks call shape: ``PGD(model, eps=8/255, alpha=2/255, steps=20)(x, y)``.

``create_attack('pgd20', model, eps=..., alpha=...)`` builds one from a short name, as used by the CLI:
``fgsm``, ``pgd<steps>`` (L∞), ``pgdl2-<steps>`` (L2), ``mifgsm[<steps>]``, ``cw[<steps>]`` (CW-L∞ margin),
``deepfool``; ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square`` (single attacks of the reference AutoAttack);
``clean`` means no attack. ``AutoAttack`` runs the reference implementation (``pyautoattack``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from ..errors import RobnetsError
from ..runtime import eval_mode
from .base import Attack, L2Attack, LinfAttack
from .cw import CWLinf
from .deepfool import DeepFool
from .fgsm import FGSM
from .mifgsm import MIFGSM
from .pgd import PGD
from .pgd_l2 import PGDL2
from .reference_autoattack import APGD, APGDT, FAB, AutoAttack, Square

ATTACK_NAMES = ("clean", "fgsm", "pgd<steps>", "pgdl2-<steps>", "mifgsm[<steps>]", "cw[<steps>]", "deepfool",
                "apgd-ce", "apgd-t", "fab-t", "square", "autoattack")
_SPEC = re.compile(r"^(clean|fgsm|deepfool|apgd-ce|apgd-t|fab-t|square|autoattack|pgdl2|pgd|mifgsm|cw)-?(\d+)?$")


def parse_attack_spec(spec: str) -> tuple[str, int | None]:
    """'pgd20' -> ('pgd', 20); 'clean' -> ('clean', None). Raises on anything else."""
    match = _SPEC.match(spec.strip().lower())
    if not match or (match.group(1) in ("clean", "fgsm", "deepfool", "apgd-ce", "apgd-t", "fab-t", "square",
                                        "autoattack") and match.group(2)):
        raise RobnetsError(f"unknown attack {spec!r}: use one of {', '.join(ATTACK_NAMES)} (e.g. pgd20)")
    return match.group(1), int(match.group(2)) if match.group(2) else None


def create_attack(
    spec: str,
    model: nn.Module,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 20,
    random_start: bool = True,
    l2_eps: float = 0.5,
    l2_alpha: float = 0.1,
    precision: str = "fp32",
    seed: int | None = None,
    step_loop: Callable[..., torch.Tensor] | None = None,
    eot_iter: int = 1,
) -> Attack | None:
    """Build the attack a short name stands for (``None`` for 'clean'); steps in the name win over ``steps``.
    ``step_loop`` goes to PGD (see :class:`PGD`)."""
    kind, named_steps = parse_attack_spec(spec)
    steps = named_steps if named_steps is not None else steps
    common = dict(precision=precision, seed=seed, eot_iter=eot_iter)
    if kind == "clean":
        return None
    if kind == "fgsm":
        return FGSM(model, eps=eps, **common)
    if kind == "pgd":
        return PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, step_loop=step_loop,
                   **common)
    if kind == "pgdl2":
        return PGDL2(model, eps=l2_eps, alpha=l2_alpha, steps=steps, random_start=random_start, **common)
    if kind == "autoattack":
        raise RobnetsError("'autoattack' is a cascade of attacks, not one attack: use robnets.attacks.AutoAttack "
                           "or `robnets eval --suite autoattack`")
    if kind in ("apgd-ce", "apgd-t", "fab-t", "square"):
        if eot_iter != 1:
            raise RobnetsError(f"{kind} takes no EOT setting here; use AutoAttack(version='rand') for randomized "
                               f"models")
        cls = {"apgd-ce": APGD, "apgd-t": APGDT, "fab-t": FAB, "square": Square}[kind]
        return cls(model, eps=eps, seed=seed or 0, precision=precision)
    if kind == "deepfool":
        return DeepFool(model, eps=eps, precision=precision, eot_iter=eot_iter)
    if kind == "cw":
        return CWLinf(model, eps=eps, alpha=eps / 10, steps=named_steps or 30, random_start=random_start,
                      **common)
    mi_steps = named_steps if named_steps is not None else 10
    return MIFGSM(model, eps=eps, alpha=eps / mi_steps, steps=mi_steps, **common)


__all__ = ["Attack", "LinfAttack", "L2Attack", "FGSM", "PGD", "PGDL2", "MIFGSM", "CWLinf", "DeepFool", "APGD",
           "APGDT", "FAB", "Square", "AutoAttack", "create_attack",
           "parse_attack_spec", "eval_mode", "ATTACK_NAMES"]
