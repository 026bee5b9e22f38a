"""The RobNet network: stem, a stack of cells (two of them reductions), global pooling, classifier.

Model contract (as RobustBench): float NCHW input in [0, 1], logits out. Any input normalization lives
inside the model as non-persistent buffers, so checkpoints never depend on it. The published RobNets were
trained on raw [0, 1] inputs, so they have none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import RobnetsError
from .cell import Cell
from .genotype import Genotype


class InputNormalization(nn.Module):
    """(x - mean) / std per channel; buffers are not saved in state dicts."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class RobNet(nn.Module):
    """A DARTS-style cell network whose cells follow a RobNet :class:`Genotype`.

    Arguments mirror the original ``Network``: ``C`` initial channels, ``layers`` cells (reductions at
    ``layers // 3`` and ``2 * layers // 3``), ``steps`` intermediate nodes per cell, ``multiplier`` nodes
    concatenated as the cell output, ``stem_multiplier`` for the CIFAR stem width, ``share`` to use one
    cell genotype for all cells, ``adaptive_pool_size`` for the final pooling, ``imagenet_stem`` for the
    three-conv stride-8 ImageNet stem (224x224 input, 7x7 average pooling).
    """

    def __init__(
        self,
        genotype: Genotype | str | Sequence[Sequence[str]],
        C: int = 36,
        num_classes: int = 10,
        layers: int = 20,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        share: bool | None = None,
        adaptive_pool_size: int = 1,
        imagenet_stem: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(genotype, Genotype):
            genotype = Genotype.parse(genotype) if isinstance(genotype, str) else Genotype.from_codes(genotype)
        if share is None:
            share = genotype.is_shared
        for name, value, low in (("C", C, 2), ("num_classes", num_classes, 1), ("layers", layers, 1),
                                 ("steps", steps, 1), ("multiplier", multiplier, 1),
                                 ("stem_multiplier", stem_multiplier, 1),
                                 ("adaptive_pool_size", adaptive_pool_size, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise RobnetsError(f"{name} must be an integer >= {low}, got {value!r}")
        if imagenet_stem and C % 2:
            raise RobnetsError(f"C must be even with the ImageNet stem (its first cell's factorized reduce splits "
                               f"C channels in two), got C={C}")
        genotype.validate_for(layers, share=share, steps=steps)
        if multiplier > steps:
            raise RobnetsError(f"multiplier ({multiplier}) cannot exceed steps ({steps})")
        if (mean is None) != (std is None):
            raise RobnetsError("give both mean and std for input normalization, or neither")

        self.genotype = genotype
        self.config: dict[str, Any] = dict(
            C=C, num_classes=num_classes, layers=layers, steps=steps, multiplier=multiplier,
            stem_multiplier=stem_multiplier, share=share, adaptive_pool_size=adaptive_pool_size,
            imagenet_stem=imagenet_stem, mean=list(mean) if mean is not None else None,
            std=list(std) if std is not None else None,
        )
        self.imagenet_stem = imagenet_stem
        self.normalize: nn.Module = InputNormalization(mean, std) if mean is not None else nn.Identity()

        if imagenet_stem:
            self.stem0 = nn.Sequential(
                nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C // 2),
                nn.ReLU(inplace=False),
                nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C),
            )
            self.stem1 = nn.Sequential(
                nn.ReLU(inplace=False),
                nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C),
            )
            c_prev_prev, c_prev, c_curr = C, C, C
            reduction_prev = True
        else:
            c_curr = stem_multiplier * C
            self.stem = nn.Sequential(nn.Conv2d(3, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
            c_prev_prev, c_prev, c_curr = c_curr, c_curr, C
            reduction_prev = False

        self.cells = nn.ModuleList()
        reduction_layers = self.reduction_layers(layers)
        for i in range(layers):
            reduction = i in reduction_layers
            if reduction:
                c_curr *= 2
            cell = Cell(genotype.cell_for_layer(i), steps, multiplier, c_prev_prev, c_prev, c_curr,
                        reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, multiplier * c_curr

        self.global_pooling = nn.AvgPool2d(7) if imagenet_stem else nn.AdaptiveAvgPool2d(adaptive_pool_size)
        self.classifier = nn.Linear(c_prev * (1 if imagenet_stem else adaptive_pool_size ** 2), num_classes)

    @staticmethod
    def reduction_layers(layers: int) -> tuple[int, int]:
        return (layers // 3, 2 * layers // 3)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def set_reference_mode(self, enabled: bool = True) -> RobNet:
        """Execute exactly like the original (absent edges multiplied by zero) when ``enabled``."""
        for cell in self.cells:
            cell.reference_mode = enabled
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise RobnetsError(f"RobNet expects a float NCHW batch with 3 channels, got shape {tuple(x.shape)}")
        x = self.normalize(x)
        if self.imagenet_stem:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))
