"""Auto-PGD (Croce & Hein, ICML 2020): PGD with momentum and a step size that adapts itself.

Written from the paper's description (Algorithm 1 and Sec. 3):

* start from a random point on the ε-sphere (clipped to [0, 1]); first step size η = 2ε;
* z = P(x_k + η·s(∇f)), x_{k+1} = P(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1})), α = 0.75 (1 at the first
  step), s = sign for L∞ and ∇/‖∇‖₂ for L2, P the projection onto the ε-ball ∩ [0, 1];
* checkpoints after intervals of 22%, then shrinking by 3% down to 6% of the iterations; at a checkpoint the
  step size of a sample is halved and the sample restarts from its best point (with the gradient there) when
  (1) the loss increased in at most ρ = 0.75 of the steps since the last checkpoint, or (2) its step size was
  not reduced at the last checkpoint and its best loss has not improved since then;
* losses: cross-entropy, DLR, and (``APGDT``) the targeted DLR against the 2nd..(k+1)-th most likely classes.

Per sample, the result is the first misclassified point found or, when none is, the point with the highest
loss over all restarts. Every sample evolves independently (summed loss, per-sample step sizes and random
starts), and a sample stops being attacked once it is misclassified, which saves compute without changing
the outcome.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ...errors import RobnetsError
from ._common import (SampleSeededAttack, ce_loss, check_count, dlr_loss, dlr_loss_targeted, normalize,
                      num_classes_check, project, random_start)
from ._rng import SampleRandom


class APGD(SampleSeededAttack):
    """Untargeted APGD with the cross-entropy (``loss='ce'``, APGD-CE) or DLR loss (``loss='dlr'``).

    Threat model: ``norm='Linf'|'L2'``, radius ``eps``.
    Arguments: ``n_iter=100``, ``n_restarts=1`` (restarts only attack images not yet misclassified),
    ``rho=0.75``, ``momentum=0.75``, ``eot_iter=1`` (gradients averaged over that many forward passes, for
    randomized models), ``seed=0``, ``precision='fp32'|'bf16'``.
    ``attack(x, y, sample_ids=None)`` -> x_adv; ``attack.last_success`` is then a bool tensor marking the
    images misclassified at their returned point (clean mistakes included).
    """

    salt = 1
    LOSSES = ("ce", "dlr")

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, n_iter: int = 100,
                 n_restarts: int = 1, loss: str = "ce", rho: float = 0.75, momentum: float = 0.75,
                 eot_iter: int = 1, seed: int | None = 0, precision: str = "fp32") -> None:
        super().__init__(model, eps, norm=norm, seed=seed, precision=precision)
        if loss not in self.LOSSES:
            raise RobnetsError(f"{type(self).__name__} loss must be one of {', '.join(self.LOSSES)}, got {loss!r}")
        if not 0.0 < rho <= 1.0 or not 0.0 < momentum <= 1.0:
            raise RobnetsError(f"rho and momentum must lie in (0, 1], got rho={rho}, momentum={momentum}")
        self.n_iter = check_count("n_iter", n_iter, 0)
        self.n_restarts = check_count("n_restarts", n_restarts)
        self.eot_iter = check_count("eot_iter", eot_iter)
        self.loss_name = loss
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.last_success: torch.Tensor | None = None
        if loss == "dlr":
            self.salt = 2

    def describe(self) -> dict:
        return {**super().describe(), "loss": self.loss_name, "n_iter": self.n_iter,
                "n_restarts": self.n_restarts, "rho": self.rho, "momentum": self.momentum,
                "eot_iter": self.eot_iter}

    # ------------------------------------------------------------------ schedule
    def checkpoint_intervals(self) -> list[int]:
        """Lengths of the intervals between checkpoints (0.22, then -0.03 each time, at least 0.06 of n_iter)."""
        first = max(int(0.22 * self.n_iter), 1)
        decrement = max(int(0.03 * self.n_iter), 1)
        shortest = max(int(0.06 * self.n_iter), 1)
        lengths, h, total = [], first, 0
        while total < self.n_iter:
            lengths.append(h)
            total += h
            h = max(h - decrement, shortest)
        return lengths

    # ------------------------------------------------------------------ losses
    def _check_classes(self, n_classes: int) -> None:
        if self.loss_name == "dlr":
            num_classes_check(n_classes, 3, "APGD with the DLR loss")
        else:
            num_classes_check(n_classes, 2, "APGD")

    def _targets(self, logits: torch.Tensor, y: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
        return [(0, None)]

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return ce_loss(logits, y) if self.loss_name == "ce" else dlr_loss(logits, y)

    def _loss_and_grad(self, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None):
        grad = torch.zeros_like(x_adv)
        for _ in range(self.eot_iter):
            x_req, logits = self.logits_with_input_grad(x_adv)
            loss = self._loss(logits, y, target)
            (g,) = torch.autograd.grad(loss.sum(), [x_req])
            grad += g.to(x_adv.dtype)
        if self.eot_iter > 1:
            grad /= self.eot_iter
        return loss.detach(), logits.detach(), grad

    # ------------------------------------------------------------------ attack
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rng = self.sample_random(x)
        out = x.clone()
        if x.shape[0] == 0:
            self.last_success = torch.zeros(0, dtype=torch.bool, device=x.device)
            return out
        logits = self.logits(x)
        self._check_classes(logits.shape[1])
        success = logits.argmax(1) != y
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        if self.eps > 0:
            for target_rank, target in self._targets(logits, y):
                for restart in range(self.n_restarts):
                    todo = (~success).nonzero().squeeze(1)
                    if todo.numel() == 0:
                        break
                    adv, fooled, x_max, loss_max = self._single_run(
                        x[todo], y[todo], None if target is None else target[todo], rng.subset(todo),
                        (target_rank, restart))
                    hit = todo[fooled]
                    out[hit] = adv[fooled]
                    success[hit] = True
                    better = ~fooled & (loss_max > best_loss[todo])
                    out[todo[better]] = x_max[better]
                    best_loss[todo[better]] = loss_max[better]
        self.last_success = success
        return out

    def _single_run(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, rng: SampleRandom,
                    stream: tuple[int, ...]):
        """One APGD run; returns (first adversarial point, fooled, best-loss point, best loss), all per sample."""
        n = x.shape[0]
        x_cur = random_start(x, self.eps, self.norm, rng, stream)
        loss, logits, grad = self._loss_and_grad(x_cur, y, target)
        if self.loss_name != "ce" and (grad.flatten(1).abs().sum(1) == 0).any():
            warnings.warn(f"{type(self).__name__}: some images have a zero gradient at the starting point; "
                          "gradient-based evaluation may be unreliable for them", RuntimeWarning, stacklevel=3)

        # results, indexed like the inputs
        adv_out = x_cur.clone()
        fooled_out = logits.argmax(1) != y
        xbest_out = x_cur.clone()
        lbest_out = loss.clone()

        # working state of the samples still being attacked (compacted as samples get fooled)
        alive = torch.arange(n, device=x.device)
        s = {
            "x": x, "y": y, "x_cur": x_cur, "x_prev": x_cur.clone(), "grad": grad,
            "x_best": x_cur.clone(), "grad_best": grad.clone(), "loss_best": loss.clone(),
            "loss_prev": loss.clone(), "n_increase": torch.zeros(n, device=x.device),
            "step": torch.full((n,), 2.0 * self.eps, device=x.device, dtype=x.dtype),
            "loss_best_at_check": loss.clone(),
            "reduced_at_check": torch.ones(n, dtype=torch.bool, device=x.device),
        }
        if target is not None:
            s["target"] = target

        def keep_only(mask: torch.Tensor) -> None:
            nonlocal alive
            alive = alive[mask]
            for key in s:
                s[key] = s[key][mask]

        keep_only(~fooled_out)
        intervals = iter(self.checkpoint_intervals())
        interval, since_check = next(intervals, self.n_iter), 0
        view = (-1,) + (1,) * (x.dim() - 1)
        for i in range(self.n_iter):
            if alive.numel() == 0:
                break
            a = 1.0 if i == 0 else self.momentum
            x_c, x_cur, x_prev, grad = s["x"], s["x_cur"], s["x_prev"], s["grad"]
            direction = grad.sign() if self.norm == "Linf" else normalize(grad, self.norm)
            z = project(x_cur + s["step"].view(view) * direction, x_c, self.eps, self.norm)
            x_new = project(x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - x_prev), x_c, self.eps, self.norm)
            s["x_prev"], s["x_cur"] = x_cur, x_new
            loss, logits, grad = self._loss_and_grad(x_new, s["y"], s.get("target"))
            s["grad"] = grad

            s["n_increase"] += (loss > s["loss_prev"]).float()
            s["loss_prev"] = loss
            improved = loss > s["loss_best"]
            s["x_best"] = torch.where(improved.view(view), x_new, s["x_best"])
            s["grad_best"] = torch.where(improved.view(view), grad, s["grad_best"])
            s["loss_best"] = torch.where(improved, loss, s["loss_best"])

            since_check += 1
            if since_check == interval:
                oscillating = s["n_increase"] <= self.rho * interval
                stalled = ~s["reduced_at_check"] & (s["loss_best_at_check"] >= s["loss_best"])
                reduce = oscillating | stalled
                s["step"] = torch.where(reduce, s["step"] / 2, s["step"])
                s["x_cur"] = torch.where(reduce.view(view), s["x_best"], s["x_cur"])
                s["grad"] = torch.where(reduce.view(view), s["grad_best"], s["grad"])
                s["reduced_at_check"] = reduce
                s["loss_best_at_check"] = s["loss_best"].clone()
                s["n_increase"] = torch.zeros_like(s["n_increase"])
                interval, since_check = next(intervals, self.n_iter), 0

            fooled = logits.argmax(1) != s["y"]
            if fooled.any():
                idx = alive[fooled]
                adv_out[idx] = x_new[fooled]
                fooled_out[idx] = True
                keep_only(~fooled)

        xbest_out[alive] = s["x_best"]
        lbest_out[alive] = s["loss_best"]
        return adv_out, fooled_out, xbest_out, lbest_out


class APGDT(APGD):
    """Targeted APGD on the targeted DLR loss (APGD-T): for each of the ``n_target_classes`` most likely
    wrong classes at the clean point (2nd, 3rd, ...), ``n_restarts`` runs on the images not yet misclassified.

    ``y`` holds the true labels (targets are chosen internally); success means misclassification.
    Defaults as in AutoAttack's standard version: ``n_target_classes=9``, ``n_restarts=1``, ``n_iter=100``.
    ``n_target_classes`` is capped at (number of classes - 1).
    """

    salt = 3
    LOSSES = ("dlr-targeted",)

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, n_iter: int = 100,
                 n_restarts: int = 1, n_target_classes: int = 9, rho: float = 0.75, momentum: float = 0.75,
                 eot_iter: int = 1, seed: int | None = 0, precision: str = "fp32") -> None:
        super().__init__(model, norm=norm, eps=eps, n_iter=n_iter, n_restarts=n_restarts, loss="dlr-targeted",
                         rho=rho, momentum=momentum, eot_iter=eot_iter, seed=seed, precision=precision)
        self.n_target_classes = check_count("n_target_classes", n_target_classes)

        self._explicit_targets: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, sample_ids: torch.Tensor | None = None,
                 targets: torch.Tensor | None = None) -> torch.Tensor:
        """``targets`` (optional): target classes to use instead of the most likely wrong ones, shape (N,)
        or (N, K) for K targets tried in turn; a target may not equal the true label."""
        self._explicit_targets = targets
        try:
            return super().__call__(x, y, sample_ids=sample_ids)
        finally:
            self._explicit_targets = None

    def describe(self) -> dict:
        return {**super().describe(), "n_target_classes": self.n_target_classes}

    def _check_classes(self, n_classes: int) -> None:
        num_classes_check(n_classes, 4, "APGD-T (targeted DLR loss)")

    def _targets(self, logits: torch.Tensor, y: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
        if self._explicit_targets is not None:
            targets = torch.as_tensor(self._explicit_targets).to(device=logits.device, dtype=torch.long)
            targets = targets[:, None] if targets.dim() == 1 else targets
            if targets.dim() != 2 or targets.shape[0] != logits.shape[0]:
                raise RobnetsError(f"targets must have shape (N,) or (N, K) with N={logits.shape[0]}, "
                                   f"got {tuple(targets.shape)}")
            if ((targets < 0) | (targets >= logits.shape[1])).any() or (targets == y[:, None]).any():
                raise RobnetsError(f"targets must be classes in [0, {logits.shape[1] - 1}] different from the "
                                   f"true labels")
            return [(k + 2, targets[:, k]) for k in range(targets.shape[1])]
        order = logits.argsort(dim=1, descending=True)
        count = min(self.n_target_classes, logits.shape[1] - 1)
        return [(rank, order[:, rank - 1]) for rank in range(2, count + 2)]

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return dlr_loss_targeted(logits, y, target)
