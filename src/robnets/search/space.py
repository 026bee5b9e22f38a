"""The RobNet search space: sampling architectures and the structural quantities the paper studies.

Sampling modes (``SearchSpace.sample``):

* ``uniform``: every edge code drawn uniformly from ``00 01 10 11`` (the paper's random sampling);
* ``density``: per cell, the number of connected edges drawn uniformly from those giving a density in
  ``[density_min, density_max]``, the connected edges chosen uniformly, each given ``01``, ``10`` or ``11``;
* ``budget``: exactly ``conv_budget`` edges per cell carry a convolution (``01`` or ``11``), the other edges
  are ``00`` or ``10`` — the paper's fixed computational budget.

With ``live_only`` (the default of ``robnets search``) only fully live cells are drawn: every node computes from
the cell's inputs and is used, and both inputs are read (:meth:`CellGenotype.is_fully_live`). Other cells
carry dead weight (a node without input is all zeros, and so is a convolution of it), so their nominal
structure is not what they compute. In ``density`` mode the edge count is drawn first and the edges are
re-drawn until the cell is live, so the density stays uniform over the counts a live cell can have.

Structure (paper Sec. 4.2), counted on the effective cell (:meth:`Genotype.effective`: edges that carry no
information removed; equal to the cell itself when it is fully live): density D = connected edges / all edges;
the convolution count per cell; and where the convolutions sit: a *direct* edge joins consecutive nodes
(node k-1 -> node k, so the edges 1->2, 2->3, 3->4, 4->5 of a 4-node cell), every other edge *skips* over at
least one node.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import RobnetsError
from ..models.genotype import CellGenotype, EdgeOp, Genotype, edge_endpoints, edges_per_cell

SAMPLING_MODES = ("uniform", "density", "budget")
_ALL = (EdgeOp.NONE, EdgeOp.SEP_CONV, EdgeOp.SKIP, EdgeOp.RES_SEP_CONV)
_CONNECTED = (EdgeOp.SEP_CONV, EdgeOp.SKIP, EdgeOp.RES_SEP_CONV)


def direct_edges(steps: int) -> list[bool]:
    """Per edge (code order): True when it joins consecutive nodes (a direct edge)."""
    return [source == target - 1 for source, target in edge_endpoints(steps)]


def structure(genotype: Genotype) -> dict[str, float]:
    """What a genotype computes (means over cells, counted on its effective cells): density, convolutions and
    their split between direct and skip edges, live intermediate nodes; and the nominal density and whether
    every cell is fully live, to show where the nominal and the effective structure differ."""
    direct = direct_edges(genotype.steps)
    effective = genotype.effective()
    cells = effective.cells
    convs = [c.num_convs for c in cells]
    direct_convs = [sum(e.has_conv and d for e, d in zip(c.edges, direct)) for c in cells]
    return {
        "density": effective.density(),
        "convs_per_cell": sum(convs) / len(cells),
        "direct_convs_per_cell": sum(direct_convs) / len(cells),
        "skip_edge_convs_per_cell": (sum(convs) - sum(direct_convs)) / len(cells),
        "connected_per_cell": sum(c.num_connected for c in cells) / len(cells),
        "live_nodes_per_cell": sum(sum(c.live_nodes()[2:]) for c in genotype.cells) / len(cells),
        "nominal_density": genotype.density(),
        "fully_live": genotype.is_fully_live(),
    }


@dataclass(frozen=True)
class SearchSpace:
    """Architectures for a network of ``layers`` cells with ``steps`` nodes; ``share`` = cell-based."""

    layers: int
    steps: int = 4
    share: bool = True
    mode: str = "uniform"
    density_min: float = 0.0
    density_max: float = 1.0
    conv_budget: int | None = None
    live_only: bool = False

    def __post_init__(self) -> None:
        edges = edges_per_cell(self.steps)
        if self.mode not in SAMPLING_MODES:
            raise RobnetsError(f"unknown sampling mode {self.mode!r}; use one of {', '.join(SAMPLING_MODES)}")
        if not 0.0 <= self.density_min <= self.density_max <= 1.0:
            raise RobnetsError(f"need 0 <= density_min <= density_max <= 1, got {self.density_min}, "
                               f"{self.density_max}")
        if self.mode == "density" and not self._density_counts():
            raise RobnetsError(f"no cell of {edges} edges has a density in [{self.density_min}, "
                               f"{self.density_max}]; widen the range")
        if self.mode == "budget" and (self.conv_budget is None or not 0 <= self.conv_budget <= edges):
            raise RobnetsError(f"sampling mode 'budget' needs search.conv_budget between 0 and {edges}, "
                               f"got {self.conv_budget}")
        if self.live_only and self.mode == "budget" and self.conv_budget < 1:
            raise RobnetsError("sampling mode 'budget' with conv_budget 0 draws cells of skips only; with "
                               "search.live_only they must still read both inputs: give conv_budget >= 1")

    def describe(self) -> dict[str, object]:
        """The distribution of one cell (what a supernet trained on this space has seen, per layer)."""
        return {"mode": self.mode, "density_min": self.density_min, "density_max": self.density_max,
                "conv_budget": self.conv_budget, "live_only": self.live_only}

    @property
    def edges(self) -> int:
        return edges_per_cell(self.steps)

    @property
    def cells(self) -> int:
        return 1 if self.share else self.layers

    def size(self) -> int:
        """How many distinct architectures the uniform space holds (4^(edges x cells))."""
        return 4 ** (self.edges * self.cells)

    def _density_counts(self) -> list[int]:
        e = self.edges
        # a live cell needs an edge into every node and edges from both inputs
        least = max(self.steps, 2) if self.live_only else 0
        return [k for k in range(least, e + 1) if self.density_min - 1e-9 <= k / e <= self.density_max + 1e-9]

    def _draw_cell(self, rng: random.Random, k: int | None) -> CellGenotype:
        e = self.edges
        if self.mode == "uniform":
            return CellGenotype(tuple(rng.choice(_ALL) for _ in range(e)))
        if self.mode == "density":
            on = set(rng.sample(range(e), k))
            return CellGenotype(tuple(rng.choice(_CONNECTED) if i in on else EdgeOp.NONE for i in range(e)))
        conv = set(rng.sample(range(e), self.conv_budget))
        return CellGenotype(tuple(
            rng.choice((EdgeOp.SEP_CONV, EdgeOp.RES_SEP_CONV)) if i in conv else rng.choice((EdgeOp.NONE, EdgeOp.SKIP))
            for i in range(e)))

    def _sample_cell(self, rng: random.Random) -> CellGenotype:
        k = rng.choice(self._density_counts()) if self.mode == "density" else None
        for _ in range(100_000):
            cell = self._draw_cell(rng, k)
            if not self.live_only or cell.is_fully_live():
                return cell
        raise RobnetsError(f"no fully live cell found in 100,000 draws of {self.describe()}; widen the space or "
                           f"set search.live_only false")

    def sample(self, rng: random.Random) -> Genotype:
        """One random architecture (one cell, or one per layer when cell-free)."""
        return Genotype(tuple(self._sample_cell(rng) for _ in range(self.cells)))

    def sample_unique(self, n: int, seed: int) -> list[Genotype]:
        """``n`` distinct architectures, deterministic in ``seed``."""
        rng = random.Random(seed)
        seen: dict[str, Genotype] = {}
        limit = max(100 * n, 1000)
        for _ in range(limit):
            if len(seen) == n:
                break
            g = self.sample(rng)
            seen.setdefault(str(g), g)
        if len(seen) < n:
            raise RobnetsError(f"could draw only {len(seen)} distinct architectures of the {n} asked for in "
                               f"this space; ask for fewer or widen the space")
        return list(seen.values())


def shard(indices: int | list[int], rank: int, world_size: int) -> list[int]:
    """The candidates rank ``rank`` handles: every ``world_size``-th, starting at ``rank`` (round robin)."""
    items = list(range(indices)) if isinstance(indices, int) else list(indices)
    if world_size < 1 or not 0 <= rank < world_size:
        raise RobnetsError(f"invalid shard: rank {rank} of world size {world_size}")
    return items[rank::world_size]

