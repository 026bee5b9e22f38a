"""Comparing two fp32 executions of a ReLU network fairly ("same numbers" up to rounding).

Logits are continuous in every rounding error, input gradients are not: a ReLU whose input lies within rounding
of zero can switch off in one execution and stay on in another, and that single unit changes the gradient of
every input pixel it depends on. On a random ``robnet_free`` (C=8, 16 images) three flipped units out of 42
million move the plain fp32 input gradient 1.7e-3 (relative L2) away from float64, while at the same activation
pattern it agrees to 4e-7. Which execution flips where is rounding luck (cuDNN's algorithm, the layout, the
summation order), so "fast and plain fp32 gradients within 1e-4" holds for some inputs and not for others,
for any two implementations, the plain path against itself on another device included.

:func:`compare_with_float64` therefore measures, for one execution path:

* ``logits_rel``: its fp32 logits against the same path in float64;
* ``grad_rel``: its fp32 input gradient against float64 (kinks included);
* ``grad_rel_same_pattern``: its fp32 input gradient against float64 evaluated with the fp32 run's ReLU
  pattern (every rounding error but no kink flips: this is what "equal up to rounding" means for gradients);
* ``flipped_units`` of ``relu_units`` and ``max_flip_margin``: how many ReLU inputs changed sign, and how close
  to zero the largest such input was in float64, relative to the root mean square of its tensor (rounding
  flips only near-zero inputs; a wrong computation flips units far from zero).

Together with float64 equality of the two paths this shows that they compute the same function and the same
gradient up to rounding. The ReLUs are observed by patching ``torch.nn.functional.relu`` (every ReLU of the
RobNets and of the fast path goes through it) and through :func:`observe_relu_input`, which a kernel
that applies a ReLU internally can call. A diagnostic: not thread-safe, not for compiled engines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F


class _Observer:
    """What the patched ReLU does: record the sign pattern, compare with a recorded one, or replay it."""

    def __init__(self, mode: str, pattern: list[torch.Tensor] | None = None) -> None:
        self.mode = mode
        self.pattern: list[torch.Tensor] = pattern if pattern is not None else []
        self.index = 0
        self.flipped = 0
        self.units = 0
        self.max_margin = 0.0

    def _next(self, x: torch.Tensor) -> torch.Tensor:
        if self.index >= len(self.pattern):
            raise RuntimeError(f"the replayed execution applies more ReLUs than the recorded one ({len(self.pattern)}): "
                               "compare an execution path only with itself in another precision")
        mask = self.pattern[self.index]
        self.index += 1
        if mask.shape != x.shape:
            raise RuntimeError(f"ReLU {self.index} has shape {tuple(x.shape)}, recorded {tuple(mask.shape)}: compare "
                               "an execution path only with itself in another precision")
        return mask

    def note(self, x: torch.Tensor) -> None:
        """A ReLU input seen (by the patched F.relu or a fused kernel)."""
        positive = x.detach() > 0
        if self.mode == "record":
            self.pattern.append(positive)
        elif self.mode == "compare":
            mask = self._next(x)
            differ = positive != mask
            count = int(differ.sum())
            self.units += x.numel()
            if count:
                self.flipped += count
                values = x.detach().double()
                rms = values.square().mean().sqrt().clamp_min(torch.finfo(torch.float64).tiny)
                self.max_margin = max(self.max_margin, float(values[differ].abs().max() / rms))
        else:
            raise RuntimeError("a fused kernel applied a ReLU during a replay: replay with kernels='torch'")


_ACTIVE: _Observer | None = None


def observe_relu_input(x: torch.Tensor) -> None:
    """Called by fused kernels for the ReLU they apply inside (no-op unless a comparison is running)."""
    if _ACTIVE is not None:
        _ACTIVE.note(x)


@contextlib.contextmanager
def _observing(observer: _Observer) -> Iterator[_Observer]:
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError("ReLU patterns are already being observed (nested comparisons are not supported)")
    original = F.relu

    def relu(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        if observer.mode == "replay":
            return x * observer._next(x).to(x.dtype)
        observer.note(x)
        return original(x, inplace=inplace)

    _ACTIVE, F.relu = observer, relu
    try:
        yield observer
    finally:
        _ACTIVE, F.relu = None, original


def logits_and_input_grad(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, gradient of the summed cross-entropy w.r.t. x), the quantities an attack step uses. The loss
    runs in the logits' precision, at least fp32 (a float64 reference stays float64)."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    loss_logits = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    (grad,) = torch.autograd.grad(F.cross_entropy(loss_logits, y, reduction="sum"), x)
    return logits.detach(), grad


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (L2 over all elements), computed in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(torch.finfo(torch.float64).tiny))


@dataclass(frozen=True)
class Float64Agreement:
    """How one fp32 execution differs from the same execution in float64 (see the module docstring)."""

    logits_rel: float
    grad_rel: float
    grad_rel_same_pattern: float
    flipped_units: int
    relu_units: int
    max_flip_margin: float
    # the fp32 run's and the float64 run's outputs, for further comparisons (not part of the summary)
    logits: torch.Tensor | None = field(default=None, repr=False, compare=False)
    grad: torch.Tensor | None = field(default=None, repr=False, compare=False)
    logits64: torch.Tensor | None = field(default=None, repr=False, compare=False)
    grad64: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        """The summary numbers (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.repr}


def compare_with_float64(model: Callable[[torch.Tensor], torch.Tensor],
                         model64: Callable[[torch.Tensor], torch.Tensor],
                         x: torch.Tensor, y: torch.Tensor) -> Float64Agreement:
    """Run ``model`` on ``x`` (its precision) and ``model64`` (the same execution path, float64 parameters and
    PyTorch kernels) on ``x`` in float64; both must apply the same ReLUs in the same order. Cross-entropy
    (sum) input gradients with labels ``y``."""
    with _observing(_Observer("record")) as recorded:
        logits, grad = logits_and_input_grad(model, x, y)
    x64 = x.detach().double()
    with _observing(_Observer("compare", recorded.pattern)) as compared:
        logits64, grad64 = logits_and_input_grad(model64, x64, y)
    if compared.index != len(recorded.pattern):
        raise RuntimeError(f"the float64 execution applied {compared.index} ReLUs, the recorded one "
                           f"{len(recorded.pattern)}: compare an execution path only with itself")
    if compared.flipped:
        with _observing(_Observer("replay", recorded.pattern)):
            _, grad64_same = logits_and_input_grad(model64, x64, y)
    else:  # the same pattern already: the float64 run above is the same-pattern reference
        grad64_same = grad64
    return Float64Agreement(
        logits_rel=relative_error(logits, logits64), grad_rel=relative_error(grad, grad64),
        grad_rel_same_pattern=relative_error(grad, grad64_same), flipped_units=compared.flipped,
        relu_units=compared.units, max_flip_margin=compared.max_margin,
        logits=logits, grad=grad, logits64=logits64, grad64=grad64)
