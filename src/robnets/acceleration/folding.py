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


def conv_of(layer: nn.Conv2d | FoldedConv) -> nn.Conv2d:
    """The convolution module behind ``layer`` (its stride, padding, groups...)."""
    return layer.conv if isinstance(layer, FoldedConv) else layer


def _same_layout(old: torch.Tensor | None, new: torch.Tensor) -> bool:
    return (old is not None and old.shape == new.shape and old.dtype == new.dtype and old.device == new.device
            and old.stride() == new.stride())


def _same_view(old: torch.Tensor | None, new: torch.Tensor) -> bool:
    return _same_layout(old, new) and old.data_ptr() == new.data_ptr()


def _refreshed(old: tuple[torch.Tensor | None, torch.Tensor | None], new: tuple[torch.Tensor, torch.Tensor | None],
               in_place: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``new`` (weight, bias), copied into ``old``'s tensors where ``in_place`` and the layouts allow: the tensors
    keep their identity, so a torch.compile'd graph or a captured CUDA graph that read them stays valid (no
    recompilation when training changes the weights); a backward through an older forward then fails loudly
    (autograd's version check), never silently."""
    (old_weight, old_bias), (weight, bias) = old, new
    if in_place and _same_layout(old_weight, weight) and (
            (old_bias is None and bias is None) or (bias is not None and _same_layout(old_bias, bias))):
        old_weight.copy_(weight)
        if bias is not None:
            old_bias.copy_(bias)
        return old_weight, old_bias
    return weight, bias


class FoldedConv:
    """A conv (+ folded BN) whose effective parameters are cached until a source tensor changes.

    With ``bn=None`` it is the conv itself (a depthwise conv of a separable conv, say). Besides the folded
    parameters in the source dtype it keeps the copies that calls asked for in other dtypes
    (:meth:`parameters` with ``dtype``): a bf16 attack would otherwise cast every weight on every
    call, about 1,200 small kernels per robnet_free attack step, more than its convolutions. Every copy is
    re-derived with the folded parameters when a source changes.
    """

    __slots__ = ("conv", "bn", "channels", "refresh_in_place", "_key", "_weight", "_bias", "_derived")

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, channels: slice | None = None) -> None:
        self.conv, self.bn, self.channels = conv, bn, channels
        self.refresh_in_place = False  # FastRobNet sets it: graphs it captured or compiled read these tensors
        self._key: tuple | None = None
        self._weight: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None
        # dtype -> (weight, bias): the derived copies, refreshed with the folded parameters
        self._derived: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _sources(self) -> list[torch.Tensor]:
        tensors = [self.conv.weight] + ([self.conv.bias] if self.conv.bias is not None else [])
        if self.bn is not None:
            tensors += [t for t in (self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias)
                        if t is not None]
        return tensors

    def _fold(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.bn is None:  # detached views of the parameters: always current, no copy to refresh
            return self.conv.weight.detach(), None if self.conv.bias is None else self.conv.bias.detach()
        return fold_parameters(self.conv, self.bn, self.channels)

    def _derive(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._weight.to(dtype).contiguous(), None if self._bias is None else self._bias.to(dtype).contiguous()

    def _refresh(self) -> None:
        with torch.no_grad():
            weight, bias = self._fold()
            if self.bn is None:
                # views of the parameters: keep the tensor objects while they still view the same storage
                if not (_same_view(self._weight, weight) and (bias is None or _same_view(self._bias, bias))):
                    self._weight, self._bias = weight, bias
            else:
                self._weight, self._bias = _refreshed((self._weight, self._bias), (weight, bias),
                                                      self.refresh_in_place)
            for key, old in list(self._derived.items()):
                self._derived[key] = _refreshed(old, self._derive(key), self.refresh_in_place)

    def parameters(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Folded (weight, bias), detached: gradients through a folded view reach the input only. ``dtype`` asks
        for a cached copy converted to that dtype."""
        sources = self._sources()
        key = tuple((id(t), t._version, t.data_ptr(), t.device, t.dtype) for t in sources)
        if key != self._key:
            self._refresh()
            self._key = key
        return self._lookup(dtype)

    def cached(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The folded (weight, bias) as last refreshed, without checking the sources (compiled regions call
        this after :meth:`parameters` ran eagerly for the same call). It never reads the source key, a tuple of
        version numbers Dynamo would guard on (a recompilation after every weight change)."""
        if self._weight is None:
            return self.parameters(dtype)
        return self._lookup(dtype)

    def _lookup(self, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        dtype = self._weight.dtype if dtype is None else dtype
        if dtype == self._weight.dtype:
            return self._weight, self._bias
        found = self._derived.get(dtype)
        if found is None:
            with torch.no_grad():
                found = self._derive(dtype)
            if not torch.compiler.is_compiling():  # a trace computes it in its graph and must not store it
                self._derived[dtype] = found
        return found

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.cached(x.dtype) if torch.compiler.is_compiling() else self.parameters(x.dtype)
        conv = self.conv
        return torch.nn.functional.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
