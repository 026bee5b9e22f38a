"""Hand-designed baselines for comparison with RobNets (CIFAR variants, 32x32 input, logits out).

The CIFAR baselines of the RobNets paper's Table 1: ResNet-18/50, WideResNet-28-10, DenseNet-121 (layouts of
kuangliu/pytorch-cifar and of Zagoruyko & Komodakis's WideResNet) and PreActResNet-18. All take a
``num_classes`` argument and optional per-channel ``mean``/``std`` normalization applied inside the model
(CIFAR-10 statistics by default; ``mean=None, std=None`` for models fed already-normalized input). Each
model's ``config`` holds exactly its builder's keyword arguments, so safetensors checkpoints rebuild it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RobnetsError
from .network import InputNormalization
from .registry import register_model

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def _normalization(mean: Sequence[float] | None, std: Sequence[float] | None) -> nn.Module:
    """``InputNormalization(mean, std)``, or identity when both are None."""
    if (mean is None) != (std is None):
        raise RobnetsError("give both mean and std for input normalization, or neither (mean=None, std=None)")
    return InputNormalization(mean, std) if mean is not None else nn.Identity()


def _norm_config(mean: Sequence[float] | None, std: Sequence[float] | None) -> dict:
    return dict(mean=list(mean) if mean is not None else None, std=list(std) if std is not None else None)


class _PooledClassifier(nn.Module):
    """Shared head of the baselines: normalize inside the model, :meth:`feature_map`, global average pooling,
    the linear classifier ``self.linear``."""

    linear: nn.Linear
    normalize: nn.Module

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.feature_map(self.normalize(x)), 1)
        return self.linear(out.flatten(1))


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., 2016): BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3; a 1x1
    projection of the activated input as shortcut when the width or resolution changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = F.relu(self.bn2(self.conv1(out)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class PreActResNet(_PooledClassifier):
    def __init__(self, num_blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10,
                 mean: Sequence[float] | None = CIFAR10_MEAN, std: Sequence[float] | None = CIFAR10_STD) -> None:
        super().__init__()
        self.normalize: nn.Module = _normalization(mean, std)
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        layers, in_planes = [], 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(PreActBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)
        self.config = dict(num_classes=num_classes, **_norm_config(mean, std))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.layers(self.conv1(x))))


@register_model(description="PreActResNet-18 (CIFAR), the fast-adversarial-training baseline; CIFAR-10 normalization inside")
def preact_resnet18(num_classes: int = 10, mean: Sequence[float] | None = CIFAR10_MEAN,
                    std: Sequence[float] | None = CIFAR10_STD) -> PreActResNet:
    """PreActResNet-18 (11.2M parameters)."""
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, mean=mean, std=std)


# ------------------------------------------------------------------------------------------------ ResNet
class BasicBlock(nn.Module):
    """Post-activation basic block (He et al., 2015): conv-BN-ReLU-conv-BN, add, ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck block: 1x1 reduce, 3x3 (strided), 1x1 expand (x4), each with BN."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(_PooledClassifier):
    """CIFAR ResNet (kuangliu/pytorch-cifar layout): 3x3 stride-1 stem, no max-pool, stages of width
    64-512 (x block expansion), global average pooling, linear classifier."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: Sequence[int], num_classes: int = 10,
                 mean: Sequence[float] | None = CIFAR10_MEAN, std: Sequence[float] | None = CIFAR10_STD) -> None:
        super().__init__()
        self.normalize: nn.Module = _normalization(mean, std)
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        self.config = dict(num_classes=num_classes, **_norm_config(mean, std))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(F.relu(self.bn1(self.conv1(x))))


@register_model(description="ResNet-18 (CIFAR, kuangliu layout); CIFAR-10 normalization inside")
def resnet18(num_classes: int = 10, mean: Sequence[float] | None = CIFAR10_MEAN,
             std: Sequence[float] | None = CIFAR10_STD) -> ResNet:
    """ResNet-18 (11.2M parameters)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, mean=mean, std=std)


@register_model(description="ResNet-50 (CIFAR, kuangliu layout, bottleneck blocks); CIFAR-10 normalization inside")
def resnet50(num_classes: int = 10, mean: Sequence[float] | None = CIFAR10_MEAN,
             std: Sequence[float] | None = CIFAR10_STD) -> ResNet:
    """ResNet-50 (23.5M parameters)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, mean=mean, std=std)


# -------------------------------------------------------------------------------------------- WideResNet
class WideBasicBlock(PreActBlock):
    """The wide block of Zagoruyko & Komodakis (2016): the pre-activation block with dropout between its convs."""


class WideResNet(_PooledClassifier):
    """WideResNet-depth-widen (CIFAR): 3x3 stem of 16 channels, three groups of (depth - 4) / 6 wide blocks
    of width 16k, 32k, 64k (strides 1, 2, 2), final BN-ReLU, global average pooling, linear classifier."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, dropout: float = 0.0,
                 mean: Sequence[float] | None = CIFAR10_MEAN, std: Sequence[float] | None = CIFAR10_STD) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise RobnetsError(f"WideResNet depth must be 6n+4 (e.g. 16, 22, 28, 40), got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.normalize: nn.Module = _normalization(mean, std)
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        layers, in_planes = [], widths[0]
        for i, planes in enumerate(widths[1:]):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(WideBasicBlock(in_planes, planes, stride, dropout))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():  # the reference implementation's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        self.config = dict(num_classes=num_classes, dropout=dropout, **_norm_config(mean, std))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.layers(self.conv1(x))))


@register_model(description="WideResNet-28-10 (CIFAR), the Madry/TRADES baseline; CIFAR-10 normalization inside")
def wide_resnet28_10(num_classes: int = 10, dropout: float = 0.0, mean: Sequence[float] | None = CIFAR10_MEAN,
                     std: Sequence[float] | None = CIFAR10_STD) -> WideResNet:
    """WideResNet-28-10 (36.5M parameters)."""
    return WideResNet(28, 10, num_classes=num_classes, dropout=dropout, mean=mean, std=std)


# ---------------------------------------------------------------------------------------------- DenseNet
class DenseLayer(nn.Module):
    """DenseNet-BC bottleneck layer: BN-ReLU-conv1x1 (4k), BN-ReLU-conv3x3 (k); output concatenated to input."""

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 (compression), 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(_PooledClassifier):
    """CIFAR DenseNet-BC (kuangliu/pytorch-cifar layout): 3x3 stem of 2k channels, four dense blocks with
    compressing transitions between them, final BN-ReLU, global average pooling, linear classifier."""

    def __init__(self, num_blocks: Sequence[int] = (6, 12, 24, 16), growth_rate: int = 32, reduction: float = 0.5,
                 num_classes: int = 10, mean: Sequence[float] | None = CIFAR10_MEAN,
                 std: Sequence[float] | None = CIFAR10_STD) -> None:
        super().__init__()
        self.normalize: nn.Module = _normalization(mean, std)
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, blocks in enumerate(num_blocks):
            layers = []
            for _ in range(blocks):
                layers.append(DenseLayer(planes, growth_rate))
                planes += growth_rate
            stages.append(nn.Sequential(*layers))
            if i < len(num_blocks) - 1:
                out_planes = int(math.floor(planes * reduction))
                stages.append(Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)
        self.config = dict(num_classes=num_classes, **_norm_config(mean, std))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.features(self.conv1(x))))


@register_model(description="DenseNet-121 (CIFAR, kuangliu layout, growth 32); CIFAR-10 normalization inside")
def densenet121(num_classes: int = 10, mean: Sequence[float] | None = CIFAR10_MEAN,
                std: Sequence[float] | None = CIFAR10_STD) -> DenseNet:
    """DenseNet-121 (7.0M parameters)."""
    return DenseNet((6, 12, 24, 16), growth_rate=32, reduction=0.5, num_classes=num_classes, mean=mean, std=std)
