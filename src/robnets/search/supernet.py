"""The one-shot supernet of the RobNet search space.

Every edge of every cell carries both candidate operations of the space with weights shared by all
architectures: a separable 3x3 convolution and a skip (identity, or factorized reduce where the edge has
stride 2). An architecture is a binary mask over them, which is exactly a :class:`Genotype` read bit by
bit: the high bit of an edge's code switches the skip on, the low bit the convolution, so ``00`` is no
edge, ``01`` the separable conv, ``10`` the skip and ``11`` their sum (the residual separable conv).

Masked-off operations are not executed. With a mask set, the supernet computes exactly what the standalone
:class:`RobNet` with that genotype computes, and :meth:`Supernet.extract` builds that standalone network
with the inherited weights (what the search fine-tunes and scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import RobnetsError
from ..models.cell import preprocessing, run_nodes
from ..models.genotype import CellGenotype, EdgeOp, Genotype
from ..models.network import InputNormalization, RobNet
from ..models.ops import FactorizedReduce, Identity, SepConv

SKIP_BIT, CONV_BIT = 0, 1  # positions in a mask's last dimension (code bit order: skip, conv)


def genotype_to_mask(genotype: Genotype, layers: int) -> torch.Tensor:
    """Boolean mask ``[layers, edges, 2]`` (``[..., 0]`` skip on, ``[..., 1]`` conv on) of a genotype."""
    genotype.validate_for(layers, share=None if genotype.is_shared else False)
    rows = []
    for layer in range(layers):
        cell = genotype.cell_for_layer(layer)
        rows.append([[e.value[0] == "1", e.value[1] == "1"] for e in cell.edges])
    return torch.tensor(rows, dtype=torch.bool)


def mask_to_genotype(mask: torch.Tensor, share: bool = False) -> Genotype:
    """The genotype of a ``[layers, edges, 2]`` mask; ``share=True`` needs identical layers and gives one cell."""
    if mask.dim() != 3 or mask.shape[-1] != 2:
        raise RobnetsError(f"an architecture mask has shape [layers, edges, 2], got {tuple(mask.shape)}")
    cells = [CellGenotype(tuple(f"{int(s)}{int(c)}" for s, c in layer.tolist())) for layer in mask.bool()]
    if share:
        if any(cell != cells[0] for cell in cells):
            raise RobnetsError("share=True needs the same mask in every layer")
        return Genotype((cells[0],))
    return Genotype(tuple(cells))


class SuperEdge(nn.Module):
    """Both candidate operations of one edge: ``conv`` (separable 3x3) and ``skip``."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = SepConv(channels, channels, 3, stride, 1)
        self.skip: nn.Module = Identity() if stride == 1 else FactorizedReduce(channels, channels)

    def forward(self, x: torch.Tensor, code: EdgeOp) -> torch.Tensor:
        if code is EdgeOp.SEP_CONV:
            return self.conv(x)
        if code is EdgeOp.SKIP:
            return self.skip(x)
        return self.conv(x) + self.skip(x)  # same order as ResSepConv: conv + res


class SuperCell(nn.Module):
    """A cell whose edges are :class:`SuperEdge`; ``cell`` (a CellGenotype) selects what runs."""

    def __init__(self, steps: int, multiplier: int, c_prev_prev: int, c_prev: int, channels: int,
                 reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.multiplier = multiplier
        self.preprocess0, self.preprocess1 = preprocessing(c_prev_prev, c_prev, channels, reduction_prev)
        self._ops = nn.ModuleList()
        self.edges: list[list[SuperEdge]] = []  # per node, the edge from each earlier state
        for i in range(steps):
            node = [SuperEdge(channels, 2 if reduction and j < 2 else 1) for j in range(2 + i)]
            self._ops.extend(node)
            self.edges.append(node)
        self.cell: CellGenotype | None = None

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        if self.cell is None:
            raise RobnetsError("the supernet has no architecture set: call set_architecture(genotype) first")
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        nodes = [[(j, (edge, code)) for j, (edge, code) in enumerate(zip(edges, codes)) if code is not EdgeOp.NONE]
                 for edges, codes in zip(self.edges, self.cell.node_edges())]
        return run_nodes(states, nodes, lambda chosen, j: chosen[0](states[j], chosen[1]), self.reduction,
                         self.multiplier)


class Supernet(nn.Module):
    """Weight-sharing network over every RobNet architecture with the given macro structure.

    The constructor mirrors :class:`RobNet` (CIFAR stem). ``share=True`` restricts architectures to one
    cell genotype for all layers (the cell-based space); ``share=False`` allows one per layer (cell-free).
    """

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, share: bool = True, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        if C % 2 or C < 2:
            raise RobnetsError(f"supernet C must be a positive even number, got {C}")
        if layers < 1 or steps < 1 or multiplier > steps:
            raise RobnetsError(f"invalid supernet shape: layers={layers}, steps={steps}, multiplier={multiplier}")
        self.config: dict[str, Any] = dict(C=C, num_classes=num_classes, layers=layers, steps=steps,
                                           multiplier=multiplier, stem_multiplier=stem_multiplier, share=share,
                                           mean=list(mean) if mean is not None else None,
                                           std=list(std) if std is not None else None)
        self.layers, self.steps, self.share = layers, steps, share
        self.normalize: nn.Module = InputNormalization(mean, std) if mean is not None else nn.Identity()
        c_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, C
        reduction_prev = False
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in RobNet.reduction_layers(layers)
            if reduction:
                c_curr *= 2
            self.cells.append(SuperCell(steps, multiplier, c_prev_prev, c_prev, c_curr, reduction, reduction_prev))
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)
        self.genotype: Genotype | None = None

    def _validate(self, genotype: Genotype) -> None:
        if self.share:
            genotype.validate_for(self.layers, share=True, steps=self.steps)
        else:
            genotype.validate_for(self.layers, share=None if genotype.is_shared else False, steps=self.steps)

    def set_architecture(self, genotype: Genotype | str) -> Supernet:
        """Select the sub-network to run (a genotype, or its canonical string)."""
        if isinstance(genotype, str):
            genotype = Genotype.parse(genotype)
        self._validate(genotype)
        if not self.share and genotype.is_shared and self.layers > 1:
            genotype = Genotype(tuple(genotype.cells[0] for _ in range(self.layers)))
        for layer, cell in enumerate(self.cells):
            cell.cell = genotype.cell_for_layer(layer)
        self.genotype = genotype
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise RobnetsError(f"the supernet expects a float NCHW batch with 3 channels, got {tuple(x.shape)}")
        s0 = s1 = self.stem(self.normalize(x))
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def subnet_kwargs(self) -> dict[str, Any]:
        c = self.config
        return dict(C=c["C"], num_classes=c["num_classes"], layers=c["layers"], steps=c["steps"],
                    multiplier=c["multiplier"], stem_multiplier=c["stem_multiplier"], mean=c["mean"], std=c["std"])

    @torch.no_grad()
    def extract(self, genotype: Genotype | str) -> RobNet:
        """The standalone RobNet of ``genotype`` carrying this supernet's (copied) weights and BN statistics."""
        if isinstance(genotype, str):
            genotype = Genotype.parse(genotype)
        self._validate(genotype)
        net = RobNet(genotype, share=genotype.is_shared, **self.subnet_kwargs())
        net.stem.load_state_dict(self.stem.state_dict())
        net.classifier.load_state_dict(self.classifier.state_dict())
        for layer, (cell, super_cell) in enumerate(zip(net.cells, self.cells)):
            cell.preprocess0.load_state_dict(super_cell.preprocess0.state_dict())
            cell.preprocess1.load_state_dict(super_cell.preprocess1.state_dict())
            chosen_ops = [op for node in cell.all_edges for _, op in node]
            super_edges = [edge for node in super_cell.edges for edge in node]
            for chosen, edge in zip(chosen_ops, super_edges):
                code = chosen.code
                if code is EdgeOp.SEP_CONV:
                    chosen.op.load_state_dict(edge.conv.state_dict())
                elif code is EdgeOp.SKIP:
                    chosen.op.load_state_dict(edge.skip.state_dict())
                elif code is EdgeOp.RES_SEP_CONV:
                    chosen.op.conv.load_state_dict(edge.conv.state_dict())
                    chosen.op.res.load_state_dict(edge.skip.state_dict())
        return net.to(next(self.parameters()).device)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches, *, device: torch.device | None = None) -> int:  # noqa: ANN001
    """Re-estimate every BatchNorm's running statistics of ``model`` (a sub-network) from ``batches``.

    Statistics are reset and then averaged over all given batches with equal weight (momentum None), so the
    result does not depend on the order of architectures trained before. Returns the images used; the
    model's train/eval mode is restored.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    try:
        for x in batches:
            if isinstance(x, (tuple, list)):
                x = x[0]
            if device is not None:
                x = x.to(device)
            model(x)
            seen += x.shape[0]
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    return seen
