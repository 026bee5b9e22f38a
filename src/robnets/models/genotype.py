"""RobNet architectures as immutable, validated genotype objects.

A RobNet cell is a DAG with two inputs (nodes 0 and 1: the preprocessed outputs of the two previous cells)
and ``steps`` intermediate nodes. Node ``2 + i`` sums one operation applied to each of nodes ``0 .. 1 + i``,
so a 4-step cell has 2 + 3 + 4 + 5 = 14 edges. Each edge carries a 2-bit code (paper notation):

=====  =============================================================
``00``  none: the edge is absent (zero)
``01``  separable 3x3 convolution
``10``  skip: identity (factorized reduce when the edge has stride 2)
``11``  residual separable 3x3 convolution (separable conv + skip)
=====  =============================================================

Canonical string form (round-trips through :meth:`Genotype.parse`): each cell is written node by node,
a node's edge codes concatenated and nodes joined by ``-``; cells are joined by ``_``. A genotype with a
single cell is cell-shared (every cell of the network uses it); one with several cells is cell-free (one
cell genotype per layer). Example, the shared cell of RobNet-large::

    1111-111111-01110110-1101010111

The string is safe in file names and is the dedup key used by logs and search results.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import GenotypeError


class EdgeOp(str, enum.Enum):
    """Operation on one cell edge, valued by its 2-bit code."""

    NONE = "00"
    SEP_CONV = "01"
    SKIP = "10"
    RES_SEP_CONV = "11"

    @property
    def has_conv(self) -> bool:
        """True when the edge computes a separable convolution (codes 01 and 11)."""
        return self in (EdgeOp.SEP_CONV, EdgeOp.RES_SEP_CONV)

    @property
    def is_connected(self) -> bool:
        """True when the edge carries information (any code but 00)."""
        return self is not EdgeOp.NONE

    @classmethod
    def from_code(cls, code: object) -> EdgeOp:
        if isinstance(code, EdgeOp):
            return code
        text = code if isinstance(code, str) else str(code)
        if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 3:
            text = format(code, "02b")
        try:
            return cls(text)
        except ValueError:
            raise GenotypeError(
                f"unknown edge code {code!r}: use one of '00' (none), '01' (sep conv), "
                f"'10' (skip), '11' (residual sep conv)"
            ) from None


def edges_per_cell(steps: int) -> int:
    """Number of edges of a cell with ``steps`` intermediate nodes: 2 + 3 + ... + (steps + 1)."""
    return steps * (steps + 3) // 2


def steps_for_edge_count(num_edges: int) -> int:
    """Inverse of :func:`edges_per_cell`; raises GenotypeError when no step count fits."""
    steps = int(round((-3 + math.sqrt(9 + 8 * num_edges)) / 2))
    if steps < 1 or edges_per_cell(steps) != num_edges:
        valid = ", ".join(f"{edges_per_cell(s)} ({s} nodes)" for s in range(1, 7))
        raise GenotypeError(
            f"a cell has {num_edges} edge codes, which fits no cell shape: "
            f"expected one of {valid}, e.g. 14 codes for the 4-node RobNet cell"
        )
    return steps


def edge_endpoints(steps: int) -> list[tuple[int, int]]:
    """(source node, target node) of every edge, in code order."""
    return [(j, 2 + i) for i in range(steps) for j in range(2 + i)]


@dataclass(frozen=True)
class CellGenotype:
    """One cell: a tuple of :class:`EdgeOp`, in edge order (see module docstring)."""

    edges: tuple[EdgeOp, ...]

    def __post_init__(self) -> None:
        edges = tuple(EdgeOp.from_code(c) for c in self.edges)
        object.__setattr__(self, "edges", edges)
        steps_for_edge_count(len(edges))

    @classmethod
    def from_codes(cls, codes: Iterable[object] | str) -> CellGenotype:
        """Build from 2-bit codes: a list like ``['11', '10', ...]`` or a bit string ``'1110...'``."""
        if isinstance(codes, str):
            bits = codes.replace("-", "").replace(" ", "")
            if len(bits) % 2 or set(bits) - {"0", "1"}:
                raise GenotypeError(
                    f"cannot read cell {codes!r}: expected pairs of bits such as '1110-111110-...'"
                )
            codes = [bits[i : i + 2] for i in range(0, len(bits), 2)]
        return cls(tuple(codes))

    @property
    def steps(self) -> int:
        return steps_for_edge_count(len(self.edges))

    @property
    def codes(self) -> list[str]:
        """The original 2-bit code list."""
        return [e.value for e in self.edges]

    def node_edges(self) -> list[tuple[EdgeOp, ...]]:
        """Edges grouped by target node: element i holds the edges into node 2 + i."""
        groups, offset = [], 0
        for i in range(self.steps):
            groups.append(self.edges[offset : offset + 2 + i])
            offset += 2 + i
        return groups

    @property
    def num_connected(self) -> int:
        return sum(e.is_connected for e in self.edges)

    def live_nodes(self, multiplier: int | None = None) -> list[bool]:
        """Per state (inputs 0 and 1, then each intermediate node): True when it carries information.

        An intermediate node is live when it is fed through a connected edge by a live state (the two inputs
        always are) and its output is used: it is among the last ``multiplier`` nodes (default: all of them,
        as in RobNets) or feeds a used node. A node without live input is all zeros (a convolution of zeros
        gives zeros), so it and the edges leaving it compute nothing.
        """
        steps = self.steps
        multiplier = steps if multiplier is None else multiplier
        endpoints = edge_endpoints(steps)
        fed = [True, True] + [False] * steps
        for (source, target), edge in zip(endpoints, self.edges):
            if edge.is_connected and fed[source]:
                fed[target] = True
        used = [False, False] + [i >= steps - multiplier for i in range(steps)]
        for (source, target), edge in reversed(list(zip(endpoints, self.edges))):
            if edge.is_connected and used[target] and fed[target]:
                used[source] = True
        return [fed[k] and used[k] for k in range(2 + steps)]

    def effective(self, multiplier: int | None = None) -> CellGenotype:
        """The cell that computes the same function with every edge that carries no information set to ``00``:
        edges leaving a dead node or entering one (see :meth:`live_nodes`)."""
        live = self.live_nodes(multiplier)
        return CellGenotype(tuple(
            edge if edge.is_connected and live[source] and live[target] else EdgeOp.NONE
            for (source, target), edge in zip(edge_endpoints(self.steps), self.edges)))

    def reads_inputs(self, multiplier: int | None = None) -> tuple[bool, bool]:
        """Whether any information-carrying edge reads input 0 (the cell before last) and input 1 (the last)."""
        live = self.live_nodes(multiplier)
        reads = [False, False]
        for (source, target), edge in zip(edge_endpoints(self.steps), self.edges):
            if source < 2 and edge.is_connected and live[target]:
                reads[source] = True
        return reads[0], reads[1]

    def is_fully_live(self, multiplier: int | None = None) -> bool:
        """True when every intermediate node computes from the inputs and is used, and both inputs are read:
        nothing in the cell is dead weight, so its structure (density, convolutions, parameters) is what runs."""
        return all(self.live_nodes(multiplier)[2:]) and all(self.reads_inputs(multiplier))

    @property
    def num_convs(self) -> int:
        return sum(e.has_conv for e in self.edges)

    def __str__(self) -> str:
        return "-".join("".join(e.value for e in node) for node in self.node_edges())


@dataclass(frozen=True)
class Genotype:
    """A RobNet architecture: one shared cell, or one cell per layer (cell-free)."""

    cells: tuple[CellGenotype, ...]

    def __post_init__(self) -> None:
        cells = tuple(c if isinstance(c, CellGenotype) else CellGenotype.from_codes(c) for c in self.cells)
        if not cells:
            raise GenotypeError("a genotype needs at least one cell")
        steps = {c.steps for c in cells}
        if len(steps) != 1:
            raise GenotypeError(
                f"all cells of a genotype must have the same number of nodes, got {sorted(steps)}"
            )
        object.__setattr__(self, "cells", cells)

    # ----------------------------------------------------------------- construction and parsing
    @classmethod
    def from_codes(cls, codes: Sequence[Sequence[object]] | Sequence[object]) -> Genotype:
        """Build from the original format: a list of cells, each a list of 2-bit codes.

        A flat list of codes (one cell) is accepted as a shared genotype.
        """
        if isinstance(codes, str):
            return cls.parse(codes)
        codes = list(codes)
        if codes and all(isinstance(c, (str, int, EdgeOp)) for c in codes):
            codes = [codes]
        return cls(tuple(CellGenotype.from_codes(c) for c in codes))

    @classmethod
    def parse(cls, text: str) -> Genotype:
        """Parse the canonical string form (also accepts a JSON list of code lists)."""
        if not isinstance(text, str):
            raise GenotypeError(f"expected a genotype string, got {type(text).__name__}")
        text = text.strip()
        if text.startswith("["):
            try:
                return cls.from_codes(json.loads(text))
            except json.JSONDecodeError as exc:
                raise GenotypeError(f"cannot read genotype JSON: {exc}") from None
        if not text:
            raise GenotypeError("empty genotype string")
        cells = []
        for part in text.split("_"):
            nodes = part.split("-")
            for i, node in enumerate(nodes):
                if len(node) != 2 * (2 + i) or set(node) - {"0", "1"}:
                    raise GenotypeError(
                        f"cannot read genotype {text!r}: node {2 + i} of cell {len(cells)} should have "
                        f"{2 + i} two-bit codes ({2 * (2 + i)} bits), got {node!r}; "
                        f"expected the form '1110-111110-11010110-1111001101' (cells joined by '_')"
                    )
            cells.append(CellGenotype.from_codes("".join(nodes)))
        return cls(tuple(cells))

    # ----------------------------------------------------------------- views
    @property
    def is_shared(self) -> bool:
        """True for a single cell shared by every layer."""
        return len(self.cells) == 1

    @property
    def steps(self) -> int:
        return self.cells[0].steps

    def to_codes(self) -> list[list[str]]:
        """The original 2-bit list format (list of cells, each a list of codes)."""
        return [c.codes for c in self.cells]

    def cell_for_layer(self, layer: int) -> CellGenotype:
        return self.cells[0] if self.is_shared else self.cells[layer]

    def validate_for(self, layers: int, share: bool | None = None, steps: int | None = None) -> None:
        """Check that this genotype can build a network with ``layers`` cells."""
        if steps is not None and steps != self.steps:
            raise GenotypeError(
                f"genotype cells have {self.steps} intermediate nodes but the network asks for "
                f"steps={steps}; use steps={self.steps}"
            )
        if share is True and not self.is_shared:
            raise GenotypeError(
                f"share=True needs a genotype with exactly one cell, got {len(self.cells)} cells; "
                f"use share=False for a cell-free architecture"
            )
        if share is False and len(self.cells) != layers and not (layers == 1 and self.is_shared):
            raise GenotypeError(
                f"cell-free genotype has {len(self.cells)} cells but the network has layers={layers}; "
                f"give one cell per layer (or layers={len(self.cells)}), or share=True with one cell"
            )

    def density(self) -> float:
        """Architecture density D = connected edges / all edges (RobNets paper, Sec. 4.2)."""
        total = sum(len(c.edges) for c in self.cells)
        return sum(c.num_connected for c in self.cells) / total

    def effective(self, multiplier: int | None = None) -> Genotype:
        """The genotype with every edge that carries no information set to ``00`` (:meth:`CellGenotype.effective`)."""
        return Genotype(tuple(c.effective(multiplier) for c in self.cells))

    def is_fully_live(self, multiplier: int | None = None) -> bool:
        """True when every cell is fully live (:meth:`CellGenotype.is_fully_live`)."""
        return all(c.is_fully_live(multiplier) for c in self.cells)

    def __str__(self) -> str:
        return "_".join(str(c) for c in self.cells)

    def __repr__(self) -> str:
        return f"Genotype({str(self)!r})"
