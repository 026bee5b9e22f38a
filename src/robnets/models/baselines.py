"""Hand-designed baselines for comparison with RobNets (CIFAR variants, 32x32 input, logits out)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .network import InputNormalization
from .registry import register_model

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., 2016): BN-ReLU-conv twice, projection shortcut when needed."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10,
                 mean: Sequence[float] | None = CIFAR10_MEAN, std: Sequence[float] | None = CIFAR10_STD) -> None:
        super().__init__()
        self.normalize: nn.Module = InputNormalization(mean, std) if mean is not None else nn.Identity()
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
        self.config = dict(num_classes=num_classes,
                           mean=list(mean) if mean is not None else None, std=list(std) if std is not None else None)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.conv1(self.normalize(x)))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.linear(out.flatten(1))


@register_model(description="PreActResNet-18 (CIFAR), the fast-adversarial-training baseline; CIFAR-10 normalization inside")
def preact_resnet18(num_classes: int = 10, mean: list[float] | None = list(CIFAR10_MEAN),
                    std: list[float] | None = list(CIFAR10_STD)) -> PreActResNet:
    """PreActResNet-18 (11.2M parameters)."""
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, mean=mean, std=std)
