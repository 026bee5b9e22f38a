"""AutoAttack (Croce & Hein, ICML 2020): the worst case over an ensemble of parameter-free attacks.

The cascade: compute which points are classified correctly, then run each attack in turn only on the points
still robust, replace the points it fools by its adversarial examples, and record the robust accuracy after
each attack. The robust accuracy is the fraction of points that no attack fooled within the ε-ball.

Versions (as published):

* ``standard``: APGD-CE (1 run), APGD-T (9 target classes, 1 restart each), FAB-T (9 target classes),
  Square (5000 queries); 100 iterations for the gradient attacks;
* ``plus``: APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square (5000 queries), APGD-T and
  FAB-T (9 target classes each);
* ``rand`` (randomized defenses): APGD-CE and APGD-DLR with 1 run and EOT over 20 forward passes;
* ``custom``: ``attacks_to_run`` names the attacks (settings adjustable through ``aa.attacks[name]``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ...errors import RobnetsError
from ...runtime import autocast_context, check_precision, eval_mode
from ..base import Attack, check_inputs
from ._common import check_norm, lp_norm
from .apgd import APGD, APGDT
from .fab import FAB
from .square import Square
from .state import EvaluationState, fingerprint

ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = ("standard", "plus", "rand", "custom")
#: tolerance on the ε-ball check of returned points (float rounding of x ± eps)
BALL_TOLERANCE = 1e-5


class AutoAttack:
    """``AutoAttack(model, norm='Linf', eps=8/255, version='standard')``;
    ``x_adv = aa.run_standard_evaluation(x, y, bs=250, state_path=None)``.

    After a run: ``aa.robust_flags`` (bool per point, CPU), ``aa.robust_accuracy``, ``aa.clean_accuracy``,
    ``aa.robust_accuracy_history`` = [('clean', acc), (attack name, robust accuracy after it), ...] and
    ``aa.attack_counts`` = {name: {'attacked': n, 'fooled': m}}.

    ``seed`` (default 0) fixes every random draw; each point's draws depend only on the seed and the point's
    index, so results do not depend on ``bs``. ``seed=None`` picks a random seed (logged). ``state_path``
    makes a long evaluation resumable (see :mod:`.state`): finished attacks are not run again, and an
    attack interrupted half-way resumes on the points it had not fooled yet.
    ``device``: where to run the attacks (default: the input's device); results come back on the input's.
    ``log``: a callable taking one string (``print`` by default, ``None`` for silence).
    ``checks=True`` runs the published sanity checks (randomized model, softmax outputs, Square finding
    points the gradient attacks missed) and logs warnings.
    """

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, version: str = "standard",
                 attacks_to_run: Sequence[str] | None = None, seed: int | None = 0, precision: str = "fp32",
                 log: Callable[[str], object] | None = print, device: str | torch.device | None = None,
                 checks: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise RobnetsError(f"AutoAttack needs an nn.Module, got {type(model).__name__}")
        self.norm = check_norm(norm)
        if not (isinstance(eps, (int, float)) and eps >= 0 and math.isfinite(eps)):
            raise RobnetsError(f"eps must be a finite number >= 0, got {eps!r}")
        if version not in VERSIONS:
            raise RobnetsError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
        self.model = model
        self.eps = float(eps)
        self.version = version
        self.precision = check_precision(precision)
        self.log_fn = log
        self.device = torch.device(device) if device is not None else None
        self.checks = bool(checks)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            self.log(f"AutoAttack: no seed given, using seed={seed}")
        self.seed = int(seed)

        common = dict(norm=self.norm, eps=self.eps, seed=self.seed, precision=self.precision)
        self.attacks: dict[str, Attack] = {
            "apgd-ce": APGD(model, loss="ce", n_iter=100, n_restarts=1, **common),
            "apgd-dlr": APGD(model, loss="dlr", n_iter=100, n_restarts=1, **common),
            "apgd-t": APGDT(model, n_iter=100, n_restarts=1, n_target_classes=9, **common),
            "fab": FAB(model, targeted=False, n_iter=100, n_restarts=1, **common),
            "fab-t": FAB(model, targeted=True, n_iter=100, n_restarts=1, n_target_classes=9, **common),
            "square": Square(model, n_queries=5000, n_restarts=1, p_init=0.8, **common),
        }
        if version == "custom":
            if not attacks_to_run:
                raise RobnetsError("version='custom' needs attacks_to_run, e.g. ['apgd-ce', 'apgd-t']")
            self.attacks_to_run = self._check_names(attacks_to_run)
        else:
            if attacks_to_run:
                raise RobnetsError(f"attacks_to_run is set by version={version!r}; use version='custom' to "
                                   f"choose the attacks")
            self._set_version(version)

        self.robust_flags: torch.Tensor | None = None
        self.clean_accuracy: float | None = None
        self.robust_accuracy_history: list[tuple[str, float]] = []
        self.attack_counts: dict[str, dict] = {}
        self.individual_accuracy: dict[str, float] = {}

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _check_names(names: Sequence[str]) -> list[str]:
        names = list(names)
        unknown = [n for n in names if n not in ATTACKS]
        if unknown or len(set(names)) != len(names):
            raise RobnetsError(f"attacks_to_run must be distinct names among {', '.join(ATTACKS)}, got {names}")
        return names

    def _set_version(self, version: str) -> None:
        a = self.attacks
        if version == "standard":
            self.attacks_to_run = ["apgd-ce", "apgd-t", "fab-t", "square"]
            a["apgd-ce"].n_restarts = 1
            a["apgd-t"].n_restarts, a["apgd-t"].n_target_classes = 1, 9
            a["fab-t"].n_restarts, a["fab-t"].n_target_classes = 1, 9
            a["square"].n_queries, a["square"].n_restarts = 5000, 1
        elif version == "plus":
            self.attacks_to_run = ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
            a["apgd-ce"].n_restarts = a["apgd-dlr"].n_restarts = 5
            a["fab"].n_restarts = 5
            a["square"].n_queries, a["square"].n_restarts = 5000, 1
            a["apgd-t"].n_restarts, a["apgd-t"].n_target_classes = 1, 9
            a["fab-t"].n_restarts, a["fab-t"].n_target_classes = 1, 9
        elif version == "rand":
            self.attacks_to_run = ["apgd-ce", "apgd-dlr"]
            for name in self.attacks_to_run:
                a[name].n_restarts, a[name].eot_iter = 1, 20

    def describe(self) -> dict:
        return {"norm": self.norm, "eps": self.eps, "version": self.version, "seed": self.seed,
                "precision": self.precision, "attacks_to_run": list(self.attacks_to_run),
                "attacks": {name: self.attacks[name].describe() for name in self.attacks_to_run}}

    def log(self, message: str) -> None:
        if self.log_fn is not None:
            self.log_fn(message)

    @property
    def robust_accuracy(self) -> float | None:
        return None if self.robust_flags is None else self.robust_flags.float().mean().item()

    # ------------------------------------------------------------------ helpers
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast_context(x.device, self.precision):
            return self.model(x).argmax(1)

    def _batches(self, n: int, bs: int):
        for start in range(0, n, bs):
            yield start, min(start + bs, n)

    def _correct(self, x: torch.Tensor, y: torch.Tensor, bs: int, device: torch.device) -> torch.Tensor:
        flags = torch.zeros(x.shape[0], dtype=torch.bool)
        for start, stop in self._batches(x.shape[0], bs):
            pred = self._predict(x[start:stop].to(device))
            flags[start:stop] = (pred == y[start:stop].to(device)).cpu()
        return flags

    def _run_checks(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad(), autocast_context(x.device, self.precision):
            first = self.model(x).float()
            second = self.model(x).float() if self.version != "rand" else first
        if self.version != "rand":
            unit = lambda t: t / (t.norm(dim=1, keepdim=True) + 1e-10)  # noqa: E731
            if ((first.argmax(1) == y) != (second.argmax(1) == y)).any() or \
                    (unit(first) - unit(second)).norm(dim=1).max().item() > 1e-4:
                self.log("AutoAttack warning: the model's outputs change between identical forward passes; it "
                         "seems to be randomized: use version='rand' (EOT)")
        if first.numel() and first.min() > -1e-5 and first.max() < 1 + 1e-5 and \
                ((first.sum(1) - 1).abs() < 1e-5).all():
            self.log("AutoAttack warning: the model seems to output probabilities; attacks need logits")
        n_classes = first.shape[1]
        for name in self.attacks_to_run:
            wanted = getattr(self.attacks[name], "n_target_classes", None)
            if name in ("apgd-t", "fab-t") and wanted is not None and wanted > n_classes - 1:
                self.log(f"AutoAttack warning: {name} asks for {wanted} target classes but the model has "
                         f"{n_classes} classes; using {n_classes - 1}")

    def _fooled(self, adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
        """Points misclassified at their returned point, which must lie in the ε-ball and in [0, 1]."""
        fooled = self._predict(adv) != y
        valid = (lp_norm(adv - x, self.norm) <= self.eps + BALL_TOLERANCE)
        valid &= (adv.flatten(1).amin(1) >= 0) & (adv.flatten(1).amax(1) <= 1)
        if (fooled & ~valid).any():
            self.log(f"AutoAttack warning: {name} returned {(fooled & ~valid).sum().item()} point(s) outside the "
                     f"{self.norm} ball of radius {self.eps:.5g} or [0, 1]; they are not counted")
        return fooled & valid

    # ------------------------------------------------------------------ evaluation
    def run_standard_evaluation(self, x: torch.Tensor, y: torch.Tensor, bs: int = 250,
                                state_path: str | os.PathLike | None = None, return_labels: bool = False):
        """Worst-case evaluation over ``attacks_to_run``; returns x_adv (and its predicted labels when
        ``return_labels``). Points nothing fooled are returned unchanged."""
        y = check_inputs(x, y)
        if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
            raise RobnetsError(f"bs must be a positive integer, got {bs!r}")
        x = x.detach()
        device = self.device or x.device
        n = x.shape[0]
        started = time.time()
        with eval_mode(self.model):
            state = self._open_state(state_path, x, y)
            if self.checks and n:
                self._run_checks(x[:bs].to(device), y[:bs].to(device))
            if state.robust_flags is None:
                state.robust_flags = self._correct(x, y, bs, device)
                state.clean_accuracy = state.robust_flags.float().mean().item() if n else 0.0
                state.history = [("clean", state.clean_accuracy)]
                state.save()
                self.log(f"AutoAttack ({self.version}, {self.norm}, eps={self.eps:.5g}): clean accuracy "
                         f"{state.clean_accuracy:.2%} on {n} points")
            else:
                self.log(f"AutoAttack: resumed from {state.path} (clean accuracy {state.clean_accuracy:.2%}, "
                         f"finished: {', '.join(state.finished) or 'none'}, robust accuracy now "
                         f"{state.robust_flags.float().mean().item():.2%})")
            flags = state.robust_flags.clone()
            x_adv = x.clone()
            state.load_points(x_adv, flags)

            order = [state.in_progress] if state.in_progress else []   # finish an interrupted attack first
            order += [name for name in self.attacks_to_run if name not in order]
            for name in order:
                if name in state.finished:
                    continue
                self._run_attack(name, x, y, x_adv, flags, state, bs, device, started)

        self.robust_flags = flags
        self.clean_accuracy = state.clean_accuracy
        self.robust_accuracy_history = list(state.history)
        self.attack_counts = {k: dict(v) for k, v in state.counts.items()}
        if self.checks:
            self._check_square(state.history)
        if n:
            worst = lp_norm(x_adv - x, self.norm).max().item()
            self.log(f"AutoAttack: robust accuracy {self.robust_accuracy:.2%} (max {self.norm} perturbation "
                     f"{worst:.5g}, {time.time() - started:.1f} s)")
        if return_labels:
            labels = torch.cat([self._predict(x_adv[a:b].to(device)).to(y.device)
                                for a, b in self._batches(n, bs)]) if n else y.clone()
            return x_adv, labels
        return x_adv

    def _open_state(self, state_path, x: torch.Tensor, y: torch.Tensor) -> EvaluationState:
        fp = fingerprint(x, y) if state_path is not None else ""
        kwargs = dict(fingerprint=fp, n=x.shape[0], norm=self.norm, eps=self.eps)
        if state_path is not None and os.path.exists(state_path):
            state = EvaluationState.load(state_path, **kwargs)
            for name in state.finished + ([state.in_progress] if state.in_progress else []):
                if name not in self.attacks_to_run:
                    raise RobnetsError(f"the state file {state_path} has results of {name!r}, which is not in "
                                       f"attacks_to_run {self.attacks_to_run}; pass another state_path")
                if state.settings.get(name) != self.attacks[name].describe():
                    raise RobnetsError(f"the state file {state_path} ran {name!r} with other settings "
                                       f"({state.settings.get(name)}); pass another state_path")
            return state
        state = EvaluationState(state_path, **kwargs)
        state.clear_points()
        return state

    def _run_attack(self, name, x, y, x_adv, flags, state: EvaluationState, bs, device, started) -> None:
        attack = self.attacks[name]
        if state.in_progress != name or state.progress is None:
            state.counts[name] = {"attacked": int(flags.sum()), "fooled": 0}
            state.settings[name] = attack.describe()
            state.in_progress = name
            state.progress = torch.zeros_like(flags)
            state.save()
        counts = state.counts[name]
        todo = (flags & ~state.progress).nonzero().squeeze(1)   # robust points not yet given to this attack
        n_batches = math.ceil(todo.numel() / bs)
        for b, (start, stop) in enumerate(self._batches(todo.numel(), bs)):
            idx = todo[start:stop]
            xb, yb = x[idx.to(x.device)].to(device), y[idx.to(y.device)].to(device)
            adv = attack(xb, yb, sample_ids=idx)
            fooled = self._fooled(adv, xb, yb, name).cpu()
            hit = idx[fooled]
            if hit.numel():
                state.save_points(hit, adv[fooled.to(adv.device)])
                x_adv[hit.to(x_adv.device)] = adv[fooled.to(adv.device)].to(x_adv.device, x_adv.dtype)
                flags[hit] = False
            counts["fooled"] += int(hit.numel())
            state.robust_flags = flags.clone()
            state.progress[idx] = True
            state.save()
            self.log(f"{name} - batch {b + 1}/{n_batches} - {hit.numel()} of {idx.numel()} points fooled")
        accuracy = flags.float().mean().item() if flags.numel() else 0.0
        state.history.append((name, accuracy))
        state.finished.append(name)
        state.in_progress, state.progress = None, None
        state.save()
        self.log(f"robust accuracy after {name.upper()}: {accuracy:.2%} (total time {time.time() - started:.1f} s)")

    def _check_square(self, history: list[tuple[str, float]]) -> None:
        names = [name for name, _ in history]
        if "square" in names and len(history) > 2:
            i = names.index("square")
            before, after = history[i - 1][1], history[i][1]
            if after < before - 0.002:
                self.log(f"AutoAttack warning: Square (black-box) lowered the robust accuracy by "
                         f"{before - after:.2%} after the white-box attacks; the evaluation may be unreliable "
                         f"(gradient masking?): consider more Square queries or restarts, or adaptive attacks")

    def run_standard_evaluation_individual(self, x: torch.Tensor, y: torch.Tensor, bs: int = 250,
                                           return_labels: bool = False) -> dict:
        """Each attack of ``attacks_to_run`` alone on all points; {name: x_adv} (or (x_adv, labels)).
        ``aa.individual_accuracy`` then holds each attack's robust accuracy."""
        names = list(self.attacks_to_run)
        results, accuracy = {}, {}
        saved = (self.attacks_to_run, self.robust_flags, self.clean_accuracy, self.robust_accuracy_history,
                 self.attack_counts)
        try:
            for name in names:
                self.attacks_to_run = [name]
                results[name] = self.run_standard_evaluation(x, y, bs=bs, return_labels=return_labels)
                accuracy[name] = self.robust_accuracy
                self.log(f"robust accuracy by {name.upper()} alone: {accuracy[name]:.2%}")
        finally:
            (self.attacks_to_run, self.robust_flags, self.clean_accuracy, self.robust_accuracy_history,
             self.attack_counts) = saved
        self.individual_accuracy = accuracy
        return results

    def clean_accuracy_of(self, x: torch.Tensor, y: torch.Tensor, bs: int = 250) -> float:
        y = check_inputs(x, y)
        with eval_mode(self.model):
            flags = self._correct(x.detach(), y, bs, self.device or x.device)
        return flags.float().mean().item() if flags.numel() else 0.0
