"""A RobNet cell: two preprocessed inputs, ``steps`` intermediate nodes, output = concat of the last nodes."""

from __future__ import annotations

import torch
from torch import nn

from .genotype import CellGenotype
from .ops import ChosenOperation, FactorizedReduce, ReLUConvBN


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
        self._steps = steps
        self._multiplier = multiplier
        self.reference_mode = False
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, channels)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, channels, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0)
        self._ops = nn.ModuleList()
        for i, node in enumerate(genotype.node_edges()):
            for j, code in enumerate(node):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(ChosenOperation(code, channels, stride))
        # Per node: indices (into the state list) and op positions of the edges that carry data.
        self._live_edges: list[list[tuple[int, int]]] = []
        offset = 0
        for i in range(steps):
            self._live_edges.append(
                [(j, offset + j) for j in range(2 + i) if not self._ops[offset + j].is_zero]
            )
            offset += 2 + i

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        if self.reference_mode:
            offset = 0
            for i in range(self._steps):
                states.append(sum(self._ops[offset + j](h) for j, h in enumerate(states)))
                offset += len(states) - 1
            return torch.cat(states[-self._multiplier :], dim=1)
        for live in self._live_edges:
            node = None
            for j, k in live:
                out = self._ops[k](states[j])
                node = out if node is None else node + out
            if node is None:  # every edge into this node is absent: the node is all zeros
                stride = 2 if self.reduction else 1
                node = torch.zeros_like(states[0][:, :, ::stride, ::stride])
            states.append(node)
        return torch.cat(states[-self._multiplier :], dim=1)
