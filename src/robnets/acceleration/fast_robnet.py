"""FastRobNet: an eval-mode execution engine for a RobNet that shares (never copies) its parameters.

What it does differently from the plain network, without changing the function it computes:

* absent edges (code ``00``) are never executed (the original multiplies them by zero);
* every BatchNorm is folded into the convolution before it (eval mode: running statistics);
* ReLU of a state read by several edges is computed once, not once per edge;
* activations use the channels-last layout where that is faster (depthwise convs on CPU and GPU);
* optionally the whole forward/backward can go through ``torch.compile`` (``compile=True``), whose graph no longer
  holds the zero multiplications and unfused BatchNorms, so Inductor can fuse the element-wise work.

Gradients flow to the input only (what attacks need); train with the source model. The engine follows the
source's current weights and BN statistics (folded parameters are re-derived when they change).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.cell import Cell, run_nodes
from ..models.network import RobNet
from ..models.ops import FactorizedReduce, Identity, ReLUConvBN, ResSepConv, SepConv
from .folding import FoldedConv

class _FastSepConv:
    """SepConv = two halves; the first takes an already-rectified input."""

    def __init__(self, op: SepConv) -> None:
        seq = op.op
        self.dw1, self.pw1 = FoldedConv(seq[1], None), FoldedConv(seq[2], seq[3])
        self.dw2, self.pw2 = FoldedConv(seq[5], None), FoldedConv(seq[6], seq[7])

    def __call__(self, rectified: torch.Tensor) -> torch.Tensor:
        mid = self.pw1(self.dw1(rectified))
        return self.pw2(self.dw2(F.relu(mid)))


class _FastFactorizedReduce:
    def __init__(self, op: FactorizedReduce) -> None:
        half = op.conv_1.out_channels
        self.conv_1 = FoldedConv(op.conv_1, op.bn, slice(0, half))
        self.conv_2 = FoldedConv(op.conv_2, op.bn, slice(half, 2 * half))

    def __call__(self, rectified: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv_1(rectified), self.conv_2(rectified[:, :, 1:, 1:])], dim=1)


class _FastEdge:
    """One live edge: what it reads (raw or rectified state) and how it computes."""

    def __init__(self, op: nn.Module) -> None:
        self.identity = isinstance(op, Identity)
        self.sep = self.reduce = None
        self.residual = False
        if isinstance(op, SepConv):
            self.sep = _FastSepConv(op)
        elif isinstance(op, ResSepConv):
            self.sep = _FastSepConv(op.conv)
            self.residual = True
            if isinstance(op.res, FactorizedReduce):
                self.reduce = _FastFactorizedReduce(op.res)
        elif isinstance(op, FactorizedReduce):
            self.reduce = _FastFactorizedReduce(op)
        elif not self.identity:
            raise TypeError(f"no fast path for edge op {type(op).__name__}")

    @property
    def needs_relu(self) -> bool:
        return not self.identity

    def __call__(self, state: torch.Tensor, rectified: torch.Tensor | None) -> torch.Tensor:
        if self.identity:
            return state
        if self.sep is None:
            return self.reduce(rectified)
        out = self.sep(rectified)
        if self.residual:
            out = out + (self.reduce(rectified) if self.reduce is not None else state)
        return out


class _FastCell:
    def __init__(self, cell: Cell) -> None:
        self.reduction = cell.reduction
        self.multiplier = cell.multiplier
        self.pre0 = self._preprocess(cell.preprocess0)
        self.pre1 = self._preprocess(cell.preprocess1)
        self.nodes = [[(j, _FastEdge(op.op)) for j, op in live] for live in cell.live_edges]

    @staticmethod
    def _preprocess(module: nn.Module):  # noqa: ANN205
        if isinstance(module, FactorizedReduce):
            reduce = _FastFactorizedReduce(module)
            return lambda x: reduce(F.relu(x))
        assert isinstance(module, ReLUConvBN)
        conv = FoldedConv(module.op[1], module.op[2])
        return lambda x: conv(F.relu(x))

    def __call__(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        rectified: dict[int, torch.Tensor] = {}  # ReLU of a state, computed once however many edges read it

        def edge_output(edge: _FastEdge, j: int) -> torch.Tensor:
            r = None
            if edge.needs_relu:
                r = rectified.get(j)
                if r is None:
                    r = rectified[j] = F.relu(states[j])
            return edge(states[j], r)

        return run_nodes(states, self.nodes, edge_output, self.reduction, self.multiplier)


def _find_folded(engine: FastRobNet) -> list[FoldedConv]:
    """Every FoldedConv the engine uses (stems, preprocessing, edges), each once."""
    found: dict[int, FoldedConv] = {}

    def visit(obj, depth: int = 0) -> None:  # noqa: ANN001
        if isinstance(obj, FoldedConv):
            found.setdefault(id(obj), obj)
        elif depth < 12 and isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item, depth + 1)
        elif depth < 12 and isinstance(obj, (_FastCell, _FastEdge, _FastSepConv, _FastFactorizedReduce)):
            for item in vars(obj).values():
                visit(item, depth + 1)
        elif depth < 12 and callable(obj) and getattr(obj, "__closure__", None):
            for cell in obj.__closure__:
                visit(cell.cell_contents, depth + 1)

    for value in list(vars(engine).values()):
        visit(value)
    return list(found.values())


class FastRobNet(nn.Module):
    """Eval-mode fast execution of ``net`` (a :class:`RobNet`), sharing its parameters."""

    def __init__(self, net: RobNet, *, channels_last: bool = True,
                 compile: bool | str | Callable = False) -> None:  # noqa: A002 - the name torch users know
        """``compile=True`` runs the forward (and so its backward) through ``torch.compile`` (Inductor), which
        fuses the element-wise work around the convolutions; a string or callable names another
        ``torch.compile`` backend (tests use ``'eager'``). The folded BatchNorm parameters are refreshed eagerly
        before each call and updated in place, so weight changes never trigger recompilation."""
        super().__init__()
        if not isinstance(net, RobNet):
            raise TypeError(f"FastRobNet needs a RobNet, got {type(net).__name__}")
        self.source = net
        self.channels_last = channels_last
        self._cells = [_FastCell(c) for c in net.cells]
        if net.imagenet_stem:
            s0 = net.stem0
            self._stem0 = (FoldedConv(s0[0], s0[1]), FoldedConv(s0[3], s0[4]))
            self._stem1 = FoldedConv(net.stem1[1], net.stem1[2])
        else:
            self._stem = FoldedConv(net.stem[0], net.stem[1])
        self._folded = _find_folded(self)
        for folded in self._folded:
            # in place: captured CUDA graphs and compiled graphs keep reading the same tensors (see refresh)
            folded.refresh_in_place = True
        self.compiled = compile is not False and compile is not None
        self._compiled_forward = None
        self._prepared_inputs: set[tuple] = set()
        if self.compiled:
            # fullgraph: a graph break would silently split the fused regions, so fail loudly instead
            backend = "inductor" if compile is True else compile
            self._compiled_forward = torch.compile(self._forward_impl, backend=backend, dynamic=False,
                                                   fullgraph=True)

    def refresh(self) -> None:
        """Re-derive every folded conv whose source weights or BatchNorm statistics changed, in place (the
        tensors keep their identity). Code that replays a captured CUDA graph calls this first, because a
        replay runs no Python and would otherwise read the folded parameters as they were at capture."""
        for folded in self._folded:
            folded.parameters()

    @property
    def genotype(self):  # noqa: ANN201
        return self.source.genotype

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"RobNet expects a float NCHW batch with 3 channels, got shape {tuple(x.shape)}")
        if self._compiled_forward is not None:
            self.refresh()  # eagerly; the compiled graph reads the refreshed cache
            self._prepare_eagerly(x)
            return self._compiled_forward(x)
        return self._forward_impl(x)

    def _prepare_eagerly(self, x: torch.Tensor) -> None:
        """A compiled engine reads, while tracing, what eager calls prepare: the weights converted to the
        activations' dtype (read, not re-derived, by the graph)."""
        autocast = torch.is_autocast_enabled(x.device.type)
        key = (tuple(x.shape), x.dtype, str(x.device), autocast)
        if key in self._prepared_inputs:
            return
        self.prepare_weights(torch.get_autocast_dtype(x.device.type) if autocast else x.dtype)
        self._prepared_inputs.add(key)

    def prepare_weights(self, dtype: torch.dtype) -> None:
        """Derive now the weight copies that calls with ``dtype`` activations read (the first call would derive
        them anyway; a compiled graph or a captured CUDA graph must find them ready)."""
        for folded in self._folded:
            folded.parameters(dtype)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        net = self.source
        x = net.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if net.imagenet_stem:
            conv_a, conv_b = self._stem0
            s0 = conv_b(F.relu(conv_a(x)))
            s1 = self._stem1(F.relu(s0))
        else:
            s0 = s1 = self._stem(x)
        for cell in self._cells:
            s0, s1 = s1, cell(s0, s1)
        out = net.global_pooling(s1)
        return F.linear(out.flatten(1), net.classifier.weight.detach(), net.classifier.bias.detach())
