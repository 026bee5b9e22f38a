"""Memory traffic of an attack step, op by op: the memory-bound estimates for the fast path.

An attack step on a RobNet at GPU batch sizes is memory-bound: its kernels (depthwise 3x3, 1x1 with tens of
channels, element-wise work) do a few FLOPs per byte. :func:`attack_step_traffic` runs one forward and
input-gradient backward under a dispatch mode that records every ATen operator with the bytes of the tensors
it reads and writes, and sums them three ways:

* ``op_by_op``: every operator reads its inputs from memory and writes its outputs (eager execution);
* ``convolutions``: the convolutions' traffic only, i.e. every element-wise operator fused into a neighbouring
  convolution (the best a fusing compiler around cuDNN's convolutions can do);
* ``fused_separable``: ``convolutions`` without the depthwise results, which a fused separable-conv kernel
  keeps on chip (forward: the depthwise output written and read back; backward: the pointwise input
  gradient written and read back by the depthwise backward).

Views, allocations and metadata operators move nothing and are not counted. Divided by a memory bandwidth,
each sum is a lower bound on the step's time for that execution strategy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros_like", "detach", "alias",
         "lift_fresh", "_to_copy_noop", "set_", "resize_", "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "is_same_size"}


def _tensor_bytes(values) -> int:  # noqa: ANN001
    seen, total = set(), 0
    for t in tree_flatten(values)[0]:
        if isinstance(t, torch.Tensor) and t.numel() > 0:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total


@dataclass
class Traffic:
    """Bytes moved by one attack step per operator kind, and the three sums described in the module doc."""

    batch_size: int
    by_operator: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    op_by_op: int = 0
    convolutions: int = 0
    fused_separable: int = 0

    def per_image(self) -> dict[str, float]:
        return {k: getattr(self, k) / self.batch_size for k in ("op_by_op", "convolutions", "fused_separable")}


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.by_operator: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.depthwise_intermediate = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if getattr(func, "is_view", False) or name in _FREE:
            return out
        if name == "convolution_backward":
            grad_out, inp, weight = args[0], args[1], args[2]
            # convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
            #                      output_padding, groups, output_mask)
            mask = args[10] if len(args) > 10 else kwargs.get("output_mask", [True] * 3)
            moved = _tensor_bytes([grad_out, weight]) + (_tensor_bytes(inp) if any(mask[1:]) else 0)
            moved += _tensor_bytes([o for o, m in zip(out, mask) if m and o is not None])
            groups = args[9] if len(args) > 9 else kwargs.get("groups", 1)
            if groups > 1 and groups == inp.shape[1]:  # depthwise backward: its grad_out comes from the 1x1
                self.depthwise_intermediate += 2 * _tensor_bytes(grad_out)
        else:
            moved = _tensor_bytes([args, kwargs]) + _tensor_bytes(out)
            if name == "convolution":  # (input, weight, bias, stride, padding, dilation, transposed, ..., groups)
                groups = args[8] if len(args) > 8 else kwargs.get("groups", 1)
                if groups > 1 and groups == args[0].shape[1]:  # depthwise forward: its output feeds the 1x1
                    self.depthwise_intermediate += 2 * _tensor_bytes(out)
        self.by_operator[name] += moved
        self.calls[name] += 1
        return out


def attack_step_traffic(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, backward: bool = True) -> Traffic:
    """Bytes moved by one attack step (forward, cross-entropy, input gradient) of ``model`` on ``(x, y)``;
    ``backward=False``: by the forward alone (a scoring pass)."""
    recorder = _Recorder()
    x = x.detach().clone().requires_grad_(backward)
    with recorder, torch.set_grad_enabled(backward):
        loss = F.cross_entropy(model(x), y, reduction="sum")
        if backward:
            torch.autograd.grad(loss, [x])
    conv = recorder.by_operator.get("convolution", 0) + recorder.by_operator.get("convolution_backward", 0)
    return Traffic(batch_size=x.shape[0], by_operator=dict(recorder.by_operator), calls=dict(recorder.calls),
                   op_by_op=sum(recorder.by_operator.values()), convolutions=conv,
                   fused_separable=conv - recorder.depthwise_intermediate)


def pgd_bound_images_per_s(step: Traffic, forward: Traffic, steps: int, bandwidth_bytes_per_s: float,
                           strategy: str = "fused_separable") -> float:
    """Images/s of a PGD-``steps`` evaluation (``steps`` attack steps, one scoring forward) if the GPU moved
    only the bytes ``strategy`` counts, at ``bandwidth_bytes_per_s``: an upper bound on that strategy's speed."""
    per_image = steps * step.per_image()[strategy] + forward.per_image()[strategy]
    return bandwidth_bytes_per_s / per_image
