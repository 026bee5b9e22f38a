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


class FoldedConv:
    """A conv (+ folded BN) whose folded parameters are cached until a source tensor changes."""

    __slots__ = ("conv", "bn", "channels", "_key", "_weight", "_bias")

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, channels: slice | None = None) -> None:
        self.conv, self.bn, self.channels = conv, bn, channels
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
                self._weight, self._bias = fold_parameters(self.conv, self.bn, self.channels)
            self._key = key
        return self._weight, self._bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.parameters()
        conv = self.conv
        return torch.nn.functional.conv2d(x, weight.to(x.dtype) if weight.dtype != x.dtype else weight,
                                          None if bias is None else bias.to(x.dtype), conv.stride,
                                          conv.padding, conv.dilation, conv.groups)
