"""PGD's inner loop as one captured CUDA graph per batch shape.

An attack step on a RobNet is hundreds of small kernels (forward and input-gradient backward); launching
them one by one from Python leaves the GPU idle. The step (forward, loss, input gradient, signed step,
projection) has fixed shapes, so it is captured once into a CUDA graph and replayed ``steps`` times.
The random start stays outside the graph (it uses the attack's seeded generator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import autocast_context


class GraphedLinfStep:
    """One L∞ PGD step on static buffers, captured as a CUDA graph (CUDA only)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
                 precision: str, targeted: bool, warmup: int = 2) -> None:
        if not x.is_cuda:
            raise ValueError("CUDA graphs need CUDA tensors")
        self.model, self.eps, self.alpha = model, eps, alpha
        self.precision, self.sign = precision, -1.0 if targeted else 1.0
        self.x = x.detach().clone()
        self.y = y.detach().clone()
        self.x_adv = x.detach().clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            saved = self.x_adv.clone()
            for _ in range(warmup):  # warm-up runs allocate workspaces and fill caches outside the graph
                self._step()
            self.x_adv.copy_(saved)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    def _step(self) -> None:
        x_adv = self.x_adv.detach().requires_grad_(True)
        with torch.enable_grad(), autocast_context(x_adv.device, self.precision):
            logits = self.model(x_adv)
        loss = F.cross_entropy(logits.float(), self.y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [x_adv])
        stepped = x_adv.detach() + (self.sign * self.alpha) * grad.sign().to(x_adv.dtype)
        projected = torch.min(torch.max(stepped, self.x - self.eps), self.x + self.eps).clamp_(0.0, 1.0)
        self.x_adv.copy_(projected)

    def run(self, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, steps: int) -> torch.Tensor:
        """``steps`` PGD steps from ``start`` for images ``x`` with labels ``y``."""
        refresh = getattr(self.model, "refresh", None)
        if refresh is not None:  # weights may have changed since capture (training): update folded copies
            refresh()
        self.x.copy_(x)
        self.y.copy_(y)
        self.x_adv.copy_(start)
        for _ in range(steps):
            self.graph.replay()
        return self.x_adv.clone()


class GraphedPGDLoop:
    """PGD's step loop on captured CUDA graphs, handed to :class:`~robnets.attacks.PGD` as ``step_loop``.

    Keeps one captured step per (shape, dtype, device, model), the two most recent (full and last batch).
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._entries: dict[tuple, GraphedLinfStep] = {}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, steps: int, *,
                 eps: float, alpha: float, precision: str, targeted: bool) -> torch.Tensor:
        """``steps`` signed-gradient steps from ``start``, projected onto the eps-ball of ``x`` and [0, 1]."""
        if not x.is_cuda:  # nothing to capture: the attack's own loop runs
            raise ValueError("GraphedPGDLoop needs CUDA tensors")
        key = (tuple(x.shape), x.dtype, str(x.device), id(model))
        if key not in self._entries:
            if len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = GraphedLinfStep(model, x, y, eps=eps, alpha=alpha, precision=precision,
                                                 targeted=targeted)
        return self._entries[key].run(x, y, start, steps)
