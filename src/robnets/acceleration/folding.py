"""BatchNorm folding: in eval mode ``BN(conv(x))`` equals a convolution with rescaled weights and a bias.

``BN(y) = (y - mean) / sqrt(var + eps) * gamma + beta``; with ``y = W x`` this is ``(W s) x + (beta - mean s)``
for ``s = gamma / sqrt(var + eps)``. Folded parameters are recomputed whenever the source weights or
statistics change (tracked by tensor version counters), so a folded view never goes stale.
"""

from __future__ import annotations

import torch
from torch import nn


def fold_parameters(conv: nn.Conv2d, bn: nn.BatchNorm2d, channels: slice | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the conv with the BN (or the BN's ``channels`` slice) folded in."""
    channels = channels if channels is not None else slice(None)
    scale = torch.rsqrt(bn.running_var[channels] + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight[channels]
    shift = -bn.running_mean[channels] * scale
    if bn.bias is not None:
        shift = shift + bn.bias[channels]
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return weight, shift


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random, non-trivial BatchNorm statistics and affine parameters (in place): a freshly built network has
    mean 0, variance 1, weight 1, bias 0, for which folding is the identity and checks of it prove nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model


def _same_layout(old: torch.Tensor | None, new: torch.Tensor) -> bool:
    return (old is not None and old.shape == new.shape and old.dtype == new.dtype and old.device == new.device
            and old.stride() == new.stride())


class FoldedConv:
    """A conv (+ folded BN) whose folded parameters are cached until a source tensor changes."""

    __slots__ = ("conv", "bn", "channels", "refresh_in_place", "_key", "_weight", "_bias")

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, channels: slice | None = None) -> None:
        self.conv, self.bn, self.channels = conv, bn, channels
        self.refresh_in_place = False  # FastRobNet sets it: graphs it captured or compiled read these tensors
        self._key: tuple | None = None
        self._weight: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None

    def _sources(self) -> list[torch.Tensor]:
        tensors = [self.conv.weight] + ([self.conv.bias] if self.conv.bias is not None else [])
        if self.bn is not None:
            tensors += [t for t in (self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias)
                        if t is not None]
        return tensors

    def parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Folded (weight, bias), detached: gradients through a folded view reach the input only."""
        if self.bn is None:
            return self.conv.weight.detach(), None if self.conv.bias is None else self.conv.bias.detach()
        sources = self._sources()
        key = tuple((id(t), t._version, t.device, t.dtype) for t in sources)
        if key != self._key:
            with torch.no_grad():
                weight, bias = fold_parameters(self.conv, self.bn, self.channels)
                if self.refresh_in_place and _same_layout(self._weight, weight) and _same_layout(self._bias, bias):
                    # refreshed in place: the tensors keep their identity, so a torch.compile'd graph that
                    # read them stays valid (no recompilation when training changes the weights); a backward
                    # through an older forward then fails loudly (autograd's version check), never silently
                    self._weight.copy_(weight)
                    self._bias.copy_(bias)
                else:
                    self._weight, self._bias = weight, bias
            self._key = key
        return self._weight, self._bias

    def cached(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The folded (weight, bias) as last refreshed, without checking the sources (compiled regions call
        this after :meth:`parameters` ran eagerly for the same call)."""
        if self.bn is None or self._weight is None:
            return self.parameters()
        return self._weight, self._bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.cached() if torch.compiler.is_compiling() else self.parameters()
        conv = self.conv
        return torch.nn.functional.conv2d(x, weight.to(x.dtype) if weight.dtype != x.dtype else weight,
                                          None if bias is None else bias.to(x.dtype), conv.stride,
                                          conv.padding, conv.dilation, conv.groups)
