"""A RobNet cell: two preprocessed inputs, ``steps`` intermediate nodes, output = concat of the last nodes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

from .genotype import CellGenotype
from .ops import ChosenOperation, FactorizedReduce, ReLUConvBN

Edge = TypeVar("Edge")


def run_nodes(states: list[torch.Tensor], nodes: Sequence[Sequence[tuple[int, Edge]]],
              edge_output: Callable[[Edge, int], torch.Tensor], reduction: bool, multiplier: int) -> torch.Tensor:
    """The cell's node loop, shared by the model, the fast engine and the supernet.

    ``states`` holds the two preprocessed inputs; each node appends the sum of ``edge_output(edge, j)`` over its
    ``(j, edge)`` pairs (``j`` indexes the states the edge reads), in edge order. A node without edges is all
    zeros (at the resolution of a reduction cell's output). Returns the concat of the last ``multiplier`` states.
    """
    for edges in nodes:
        node = None
        for j, edge in edges:
            out = edge_output(edge, j)
            node = out if node is None else node + out
        if node is None:
            stride = 2 if reduction else 1
            node = torch.zeros_like(states[0][:, :, ::stride, ::stride])
        states.append(node)
    return torch.cat(states[-multiplier:], dim=1)


def preprocessing(c_prev_prev: int, c_prev: int, channels: int, reduction_prev: bool) -> tuple[nn.Module, nn.Module]:
    """The two input adapters of a cell: the older input halved in resolution when the previous cell reduced."""
    first = FactorizedReduce(c_prev_prev, channels) if reduction_prev else ReLUConvBN(c_prev_prev, channels, 1, 1, 0)
    return first, ReLUConvBN(c_prev, channels, 1, 1, 0)


class Cell(nn.Module):
    """One cell built from a :class:`CellGenotype`.

    Absent edges (code ``00``) are skipped at run time: they cost no compute, and because adding a zero
    never changes a floating-point sum, the output equals the original implementation's, which multiplies
    the input by zero. ``reference_mode = True`` restores the original's behaviour exactly (used by the
    plain benchmark path and by tests that prove the equivalence).
    """

    def __init__(
        self,
        genotype: CellGenotype,
        steps: int,
        multiplier: int,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.genotype = genotype
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        self.reference_mode = False
        self.preprocess0, self.preprocess1 = preprocessing(c_prev_prev, c_prev, channels, reduction_prev)
        self._ops = nn.ModuleList()  # the name is part of the original checkpoints' keys
        for node in genotype.node_edges():
            for j, code in enumerate(node):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(ChosenOperation(code, channels, stride))
        # per node: (state index, operation) of every edge, and of the edges that carry data
        self.all_edges: list[list[tuple[int, ChosenOperation]]] = []
        offset = 0
        for i in range(steps):
            self.all_edges.append([(j, self._ops[offset + j]) for j in range(2 + i)])
            offset += 2 + i
        self.live_edges = [[(j, op) for j, op in node if not op.is_zero] for node in self.all_edges]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        nodes = self.all_edges if self.reference_mode else self.live_edges
        return run_nodes(states, nodes, lambda op, j: op(states[j]), self.reduction, self.multiplier)
