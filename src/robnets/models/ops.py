"""Edge operations of RobNet cells.

Module structure and attribute names follow the original implementation exactly, because state-dict keys
(``_ops.3.op.conv.op.1.weight`` ...) are derived from them and checkpoints published for the original code
must load with strict matching. BatchNorm inside cells has ``affine=False`` as in the original.
"""

from __future__ import annotations

import torch
from torch import nn

from .genotype import EdgeOp


class ReLUConvBN(nn.Module):
    """ReLU -> Conv -> BN(affine=False): the cell input preprocessing."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked (ReLU, depthwise 3x3, pointwise 1x1, BN) blocks; the first carries the stride."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride=stride, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, padding=0, bias=False),
            nn.BatchNorm2d(c_in, affine=False),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride=1, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(c_out, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Identity(nn.Module):
    """Skip connection with stride 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The absent edge. The original multiplies its input by zero; cells skip it unless told otherwise."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset 1x1 stride-2 convolutions, concatenated, then BN."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        out = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


class ResSepConv(nn.Module):
    """Separable conv plus a skip path (identity, or factorized reduce at stride 2)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = SepConv(c_in, c_out, kernel_size, stride, padding)
        self.res = Identity() if stride == 1 else FactorizedReduce(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.res(x)


def build_edge_op(code: EdgeOp, channels: int, stride: int) -> nn.Module:
    """The module for one edge with the given 2-bit code."""
    if code is EdgeOp.NONE:
        return Zero(stride)
    if code is EdgeOp.SEP_CONV:
        return SepConv(channels, channels, 3, stride, 1)
    if code is EdgeOp.SKIP:
        return Identity() if stride == 1 else FactorizedReduce(channels, channels)
    if code is EdgeOp.RES_SEP_CONV:
        return ResSepConv(channels, channels, 3, stride, 1)
    raise AssertionError(code)


class ChosenOperation(nn.Module):
    """Wrapper holding one edge's op as ``.op`` (gives the original ``_ops.N.op...`` key names)."""

    def __init__(self, code: EdgeOp, channels: int, stride: int) -> None:
        super().__init__()
        self.code = code
        self.stride = stride
        self.op = build_edge_op(code, channels, stride)

    @property
    def is_zero(self) -> bool:
        return self.code is EdgeOp.NONE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)
