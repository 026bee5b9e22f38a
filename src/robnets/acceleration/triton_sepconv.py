"""Fused Triton kernels for one half of a separable conv: (ReLU) -> depthwise KxK -> pointwise 1x1 (+ folded BN).

:func:`triton_sep_half` computes exactly what :func:`robnets.acceleration.fast_robnet.torch_sep_half` computes,
with one kernel launch for the forward and one for the input gradient:

* **forward** (``_sep_half_fwd``): each program owns a tile of ``BLOCK_P`` output pixels (flattened over
  N, Ho, Wo) and ``BLOCK_CO`` output channels. It walks the input channels in ``BLOCK_CI`` chunks; for each
  chunk it loads the KxK neighbourhood of every pixel of the tile (addressed through the input's strides, so
  channels-last, NCHW or any strided view works), applies the ReLU if asked, accumulates the depthwise result
  in fp32 registers and feeds it straight into ``tl.dot`` with the folded pointwise weight. The bias is added
  and the tile stored; the depthwise intermediate never touches memory.
* **backward** (``_sep_half_bwd``, input gradient only: the weights are detached folded views): each program
  owns ``BLOCK_P`` *input* pixels and ``BLOCK_CI`` input channels, and gathers
  ``grad_x = [x > 0] * sum_taps (grad_out at the pixels the tap reaches) @ (W_pw * w_dw[tap])``: for each
  ``BLOCK_CO`` chunk of the output channels the pointwise weight tile is loaded once; each tap scales it by its
  depthwise weights and one ``tl.dot`` on the grad_out tile gathered at that tap's pixels (respecting stride
  and padding; pixels no output reads through that tap are masked) accumulates straight into the fp32
  result; the ReLU mask is applied at the end. Deterministic, no atomics, no scratch buffer; the price is
  K*K = 9 times the pointwise FLOPs (masked taps of a stride-2 layer skip their loads, not their dot). An
  earlier version evaluated ``grad_out @ W_pw`` per tap into a second accumulator and reloaded the weight tile
  per tap: it spilled registers in every tiling compiled for sm_90 but one
  (:mod:`robnets.acceleration.triton_static`). The alternative, ``split`` (grad_mid written once by a GEMM,
  then a transposed-depthwise kernel), trades those FLOPs for one extra round trip of grad_mid through memory.

Precision: accumulation is always fp32. fp32 inputs use ``tl.dot`` with TF32 exactly when PyTorch's own
convolutions may (``torch.backends.cudnn.allow_tf32``, which the reference ``F.conv2d`` follows), IEEE fp32
otherwise and always under the interpreter; bf16/fp16 inputs round the depthwise result to the input dtype
before the pointwise product (as the reference does) and return the input dtype. The output is channels-last.

Under ``torch.compile`` the same launches run as opaque operators, ``robnets::triton_sep_half`` and
``robnets::triton_sep_half_input_grad`` (Dynamo cannot trace a launch from Python), so Inductor fuses the
element-wise work around them.

Triton is optional: importing this module never fails; calling the kernels without Triton (or without CUDA and
without ``TRITON_INTERPRET=1``) raises a clear :class:`RuntimeError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from .folding import LAYOUTS, FoldedConv, conv_of
from .numerics import observe_relu_input

try:  # Triton is an optional dependency
    import triton
    import triton.language as tl
except Exception as exc:  # noqa: BLE001 - any failure to import means "no Triton"
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR: Exception | None = exc
else:
    _TRITON_IMPORT_ERROR = None

__all__ = ["DEFAULT_BACKWARD_CONFIG", "DEFAULT_FORWARD_CONFIG", "TORCH_KERNELS", "KernelConfig", "KernelLaunch",
           "TorchKernels", "recording_launches", "triton_available", "triton_sep_half"]


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch settings of one kernel. ``tl.dot`` needs every dimension >= 16; all blocks are
    powers of two (channel blocks shrink to the next power of two of the channel count and mask the rest).

    ``block_p``: pixels per program (forward: output pixels, backward: input pixels), the dot's M.
    ``block_ci``: input channels per chunk (forward: the reduction, K; backward: channels per program, N).
    ``block_co``: output channels (forward: per program, N; backward: per chunk of the reduction, K). A forward
    ``block_co`` covering every output channel computes each depthwise tile once instead of once per block.
    ``num_stages`` > 1 pipelines the loads (more shared memory: 64 x 64 fp32 tiles with 2 stages did not fit
    an H100/H200 block's 227 KB).
    ``split``: instead of one fused kernel, a Triton depthwise kernel (ReLU, or in the backward the ReLU mask,
    fused in) and the 1x1 product as a cuBLAS GEMM on the channels-last (pixels x channels) matrices. The
    depthwise result (its gradient) makes one extra round trip through memory, but nothing is recomputed:
    the fused backward evaluates ``grad_out @ W_pw`` once per tap, 9 times. ``block_co`` is then unused.
    """

    block_p: int = 64
    block_ci: int = 64
    block_co: int = 64
    num_warps: int = 4
    num_stages: int = 1
    split: bool = False

    def __post_init__(self) -> None:
        for name in ("block_p", "block_ci", "block_co"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two >= 16 (tl.dot), got {value}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"KernelConfig.num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"KernelConfig.num_stages must be at least 1, got {self.num_stages}")

    @classmethod
    def from_label(cls, label: str) -> KernelConfig:
        """The inverse of :meth:`label`: ``'p64-ci64-co64-w4-s1'``, optionally ending in ``'-split'``."""
        match = re.fullmatch(r"p(\d+)-ci(\d+)-co(\d+)-w(\d+)-s(\d+)(-split)?", label.strip())
        if match is None:
            raise ValueError(f"{label!r} is not a kernel configuration label like p64-ci64-co64-w4-s1 "
                             "(optionally ending in -split)")
        p, ci, co, w, s = (int(v) for v in match.groups()[:5])
        return cls(block_p=p, block_ci=ci, block_co=co, num_warps=w, num_stages=s, split=match.group(6) is not None)

    def label(self) -> str:
        return (f"p{self.block_p}-ci{self.block_ci}-co{self.block_co}-w{self.num_warps}-s{self.num_stages}"
                + ("-split" if self.split else ""))


# Chosen without a GPU (benchmarks/triton_static.py, results/triton-static.md): compiled for sm_90 at robnet_free's
# shapes, in fp32 and bf16, these spill no registers, load activations in 64/128-bit vectors and keep 12-31 % of
# an SM's warps resident. The earlier p64-ci64-co64-w4-s1 for both (measured on an H200: 502 / 937 us per call,
# 15-25x slower than cuDNN) spilled 0.5-1.2 KB per thread. Which tiling is fastest is for a GPU to say:
# benchmarks/sepconv_kernels.py --configs sweep.
DEFAULT_FORWARD_CONFIG = KernelConfig(block_p=64, block_ci=16, block_co=64, num_warps=4, num_stages=2)
DEFAULT_BACKWARD_CONFIG = KernelConfig(block_p=32, block_ci=64, block_co=32, num_warps=4, num_stages=1)


@dataclass(frozen=True)
class TorchKernels:
    """In place of a :class:`KernelConfig`: this direction runs PyTorch's kernels (cuDNN on CUDA) on the same
    weights, so one direction of a half can be Triton and the other cuDNN (the per-shape tuner,
    :mod:`robnets.acceleration.tuning`, picks each direction's fastest). Same function, same dtype contract.
    Its depthwise weight keeps conv2d's (C, 1, KH, KW) layout (:func:`depthwise_weight`): converting the
    Triton kernels' tap-major one back on every call would add a kernel to each call, and to its timing."""

    def label(self) -> str:
        return "torch"


TORCH_KERNELS = TorchKernels()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available() -> bool:
    """True when Triton imports and can run here: a CUDA device, or the CPU interpreter (TRITON_INTERPRET=1)."""
    return triton is not None and (torch.cuda.is_available() or _interpreting())


def _channel_block(n: int, cap: int) -> int:
    return max(16, min(cap, 1 << max(0, n - 1).bit_length()))


if triton is not None:

    @triton.jit
    def _pixel_tile(pid, P, HH, WW, BLOCK_P: tl.constexpr):
        """The BLOCK_P pixels (flattened over N, HH, WW) of program ``pid``: (p, in range, image, row, column)."""
        p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
        rem = p % (HH * WW)
        return p, p < P, p // (HH * WW), rem // WW, rem % WW

    @triton.jit
    def _tap_source(ih, iw, p_ok, HO, WO, kh: tl.constexpr, kw: tl.constexpr,
                    STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr):
        """For input pixels (ih, iw): the output pixel (oh, ow) that reads them through tap (kh, kw), and
        whether one does (oh * STRIDE - PAD + kh * DIL == ih, inside the output; likewise for columns)."""
        th = ih + PAD - kh * DIL
        tw = iw + PAD - kw * DIL
        oh = th // STRIDE
        ow = tw // STRIDE
        ok = p_ok & (th >= 0) & (th % STRIDE == 0) & (oh < HO) & (tw >= 0) & (tw % STRIDE == 0) & (ow < WO)
        return ok, oh, ow

    @triton.jit
    def _store_input_grad(acc, x_ptr, gx_ptr, n, ih, iw, p_ok, ci, ci_ok, sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw,
                          RELU: tl.constexpr, ALIGN: tl.constexpr):
        """The backward epilogue: the ReLU mask (where the kernel's input was not positive) and the store."""
        x_offs = tl.multiple_of(n.to(tl.int64) * sxn + ih * sxh + iw * sxw, ALIGN)[:, None] \
            + ci.to(tl.int64)[None, :] * sxc
        io_mask = p_ok[:, None] & ci_ok[None, :]
        if RELU:
            xv = tl.load(x_ptr + x_offs, mask=io_mask, other=0.0)
            acc = tl.where(xv > 0.0, acc, 0.0)
        gx_offs = tl.multiple_of(n.to(tl.int64) * sdn + ih * sdh + iw * sdw, ALIGN)[:, None] \
            + ci.to(tl.int64)[None, :] * sdc
        tl.store(gx_ptr + gx_offs, acc.to(gx_ptr.dtype.element_ty), mask=io_mask)

    @triton.jit
    def _depthwise_tile(
        x_ptr, dw_ptr, x_pix, oh, ow, p_ok, ci, ci_ok,
        C, H, W, sxc, sxh, sxw,
        STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr, RELU: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ALIGN: tl.constexpr,
    ):
        """(ReLU) -> depthwise KxK for a tile of output pixels (image offset ``x_pix``, row ``oh``, column
        ``ow``) and channels ``ci``, accumulated in fp32; shared by the fused and the split forward."""
        x_ch = ci.to(tl.int64) * sxc
        mid = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for kh in tl.static_range(KH):
            ih = oh * STRIDE - PAD + kh * DIL
            h_ok = p_ok & (ih >= 0) & (ih < H)
            for kw in tl.static_range(KW):
                iw = ow * STRIDE - PAD + kw * DIL
                ok = h_ok & (iw >= 0) & (iw < W)
                offs = tl.multiple_of(x_pix + ih * sxh + iw * sxw, ALIGN)[:, None] + x_ch[None, :]
                xv = tl.load(x_ptr + offs, mask=ok[:, None] & ci_ok[None, :], other=0.0).to(tl.float32)
                if RELU:
                    xv = tl.where(xv > 0.0, xv, 0.0)
                wv = tl.load(dw_ptr + tl.multiple_of((kh * KW + kw) * C, ALIGN) + ci, mask=ci_ok,
                             other=0.0).to(tl.float32)
                mid += xv * wv[None, :]
        return mid

    @triton.jit
    def _sep_half_fwd(
        x_ptr, dw_ptr, pw_ptr, b_ptr, y_ptr,
        C, H, W, CO, HO, WO, P,
        sxn, sxc, sxh, sxw,
        syn, syc, syh, syw,
        STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr,
        RELU: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, ALIGN: tl.constexpr,
    ):
        pid_p = tl.program_id(0)
        pid_co = tl.program_id(1)
        # C (and CO) are multiples of ALIGN; saying so lets Triton vectorise the channel masks (c < C) as well
        # as the offsets. A scalar argument takes no tl.multiple_of hint; (C // ALIGN) * ALIGN carries one.
        C = (C // ALIGN) * ALIGN
        CO = (CO // ALIGN) * ALIGN
        p, p_ok, n, oh, ow = _pixel_tile(pid_p, P, HO, WO, BLOCK_P)
        x_pix = n.to(tl.int64) * sxn
        co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
        co_ok = co < CO

        acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
        for ci0 in range(0, C, BLOCK_CI):
            ci = ci0 + tl.arange(0, BLOCK_CI)
            ci_ok = ci < C
            mid = _depthwise_tile(x_ptr, dw_ptr, x_pix, oh, ow, p_ok, ci, ci_ok, C, H, W, sxc, sxh, sxw,
                                  STRIDE, PAD, DIL, KH, KW, RELU, BLOCK_P, BLOCK_CI, ALIGN)
            # W_pw is (CO, C) row-major; the dot wants (BLOCK_CI, BLOCK_CO).
            wt = tl.load(pw_ptr + tl.multiple_of(co * C, ALIGN)[None, :] + ci[:, None],
                         mask=ci_ok[:, None] & co_ok[None, :], other=0.0)
            mid = mid.to(wt.dtype)  # the reference rounds the depthwise result to the input dtype
            if UPCAST_DOT:
                mid, wt = mid.to(tl.float32), wt.to(tl.float32)
            acc = tl.dot(mid, wt, acc, input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
        y_offs = tl.multiple_of(n.to(tl.int64) * syn + oh * syh + ow * syw, ALIGN)[:, None] \
            + co.to(tl.int64)[None, :] * syc
        tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=p_ok[:, None] & co_ok[None, :])

    @triton.jit
    def _sep_half_bwd(
        x_ptr, g_ptr, dw_ptr, pw_ptr, gx_ptr,
        C, H, W, CO, HO, WO, P,
        sxn, sxc, sxh, sxw,
        sgn, sgc, sgh, sgw,
        sdn, sdc, sdh, sdw,
        STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr,
        RELU: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, ALIGN: tl.constexpr,
    ):
        pid_p = tl.program_id(0)
        pid_ci = tl.program_id(1)
        C = (C // ALIGN) * ALIGN  # see _sep_half_fwd
        CO = (CO // ALIGN) * ALIGN
        p, p_ok, n, ih, iw = _pixel_tile(pid_p, P, H, W, BLOCK_P)  # input pixels
        g_pix = n.to(tl.int64) * sgn
        ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
        ci_ok = ci < C

        acc = tl.zeros((BLOCK_P, BLOCK_CI), dtype=tl.float32)
        for co0 in range(0, CO, BLOCK_CO):
            co = co0 + tl.arange(0, BLOCK_CO)
            co_ok = co < CO
            # W_pw is (CO, C) row-major: its (BLOCK_CO, BLOCK_CI) tile, loaded once for all taps.
            wt = tl.load(pw_ptr + tl.multiple_of(co * C, ALIGN)[:, None] + ci[None, :],
                         mask=co_ok[:, None] & ci_ok[None, :],
                         other=0.0).to(tl.float32)
            for kh in tl.static_range(KH):
                for kw in tl.static_range(KW):
                    ok, oh, ow = _tap_source(ih, iw, p_ok, HO, WO, kh, kw, STRIDE, PAD, DIL)
                    # No tl.where(ok, ..., 0) around the offset: masked lanes read nothing, and the select hides the
                    # rows' 16-element alignment from Triton, which then loads grad_out one element at a time.
                    g_rows = tl.multiple_of(g_pix + oh * sgh + ow * sgw, ALIGN)
                    gv = tl.load(g_ptr + g_rows[:, None] + co.to(tl.int64)[None, :] * sgc,
                                 mask=ok[:, None] & co_ok[None, :], other=0.0)
                    # sum_tap w_dw[tap] * (grad_out[tap pixels] @ W_pw) = sum_tap grad_out[tap pixels] @ (W_pw *
                    # w_dw[tap]): the tap's weight scales the W tile, and tl.dot accumulates straight into acc.
                    wdw = tl.load(dw_ptr + tl.multiple_of((kh * KW + kw) * C, ALIGN) + ci, mask=ci_ok, other=0.0).to(tl.float32)
                    w_tap = (wt * wdw[None, :]).to(pw_ptr.dtype.element_ty)
                    gv = gv.to(pw_ptr.dtype.element_ty)
                    if UPCAST_DOT:
                        acc = tl.dot(gv.to(tl.float32), w_tap.to(tl.float32), acc, input_precision=PRECISION)
                    else:
                        acc = tl.dot(gv, w_tap, acc, input_precision=PRECISION)
        _store_input_grad(acc, x_ptr, gx_ptr, n, ih, iw, p_ok, ci, ci_ok, sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw,
                          RELU, ALIGN)


if triton is not None:

    @triton.jit
    def _depthwise_fwd(
        x_ptr, dw_ptr, m_ptr,
        C, H, W, HO, WO, P,
        sxn, sxc, sxh, sxw,
        STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr, RELU: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ALIGN: tl.constexpr,
    ):
        """(ReLU) -> depthwise KxK into a (P, C) row-major matrix: the split forward's first half."""
        pid_p = tl.program_id(0)
        pid_c = tl.program_id(1)
        C = (C // ALIGN) * ALIGN  # see _sep_half_fwd
        p, p_ok, n, oh, ow = _pixel_tile(pid_p, P, HO, WO, BLOCK_P)
        x_pix = n.to(tl.int64) * sxn
        ci = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        ci_ok = ci < C
        mid = _depthwise_tile(x_ptr, dw_ptr, x_pix, oh, ow, p_ok, ci, ci_ok, C, H, W, sxc, sxh, sxw,
                              STRIDE, PAD, DIL, KH, KW, RELU, BLOCK_P, BLOCK_C, ALIGN)
        m_offs = tl.multiple_of(p.to(tl.int64) * C, ALIGN)[:, None] + ci[None, :]
        tl.store(m_ptr + m_offs, mid.to(m_ptr.dtype.element_ty), mask=p_ok[:, None] & ci_ok[None, :])

    @triton.jit
    def _depthwise_bwd(
        x_ptr, g_ptr, dw_ptr, gx_ptr,
        C, H, W, HO, WO, P,
        sxn, sxc, sxh, sxw,
        sdn, sdc, sdh, sdw,
        STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr, RELU: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ALIGN: tl.constexpr,
    ):
        """Input gradient of (ReLU) -> depthwise KxK from grad_mid, a (N*HO*WO, C) row-major matrix: for each
        input pixel, the taps' weights times grad_mid at the output pixels they reach, then the ReLU mask."""
        pid_p = tl.program_id(0)
        pid_c = tl.program_id(1)
        C = (C // ALIGN) * ALIGN  # see _sep_half_fwd
        p, p_ok, n, ih, iw = _pixel_tile(pid_p, P, H, W, BLOCK_P)  # input pixels
        ci = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        ci_ok = ci < C
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                ok, oh, ow = _tap_source(ih, iw, p_ok, HO, WO, kh, kw, STRIDE, PAD, DIL)
                row = tl.multiple_of(((n * HO + oh) * WO + ow).to(tl.int64) * C, ALIGN)
                gv = tl.load(g_ptr + row[:, None] + ci[None, :], mask=ok[:, None] & ci_ok[None, :],
                             other=0.0).to(tl.float32)
                wdw = tl.load(dw_ptr + tl.multiple_of((kh * KW + kw) * C, ALIGN) + ci, mask=ci_ok, other=0.0).to(tl.float32)
                acc += gv * wdw[None, :]
        _store_input_grad(acc, x_ptr, gx_ptr, n, ih, iw, p_ok, ci, ci_ok, sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw,
                          RELU, ALIGN)


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch as :func:`triton_sep_half` makes it: the jitted kernel, its grid and arguments."""

    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict


_RECORDER: ContextVar[list | None] = ContextVar("robnets_triton_launch_recorder", default=None)


@contextmanager
def recording_launches() -> Iterator[list[KernelLaunch]]:
    """Record the kernel launches instead of running them, on any device (meta tensors included): how
    :mod:`robnets.acceleration.triton_static` compiles exactly the launches a GPU would run without one."""
    launches: list[KernelLaunch] = []
    token = _RECORDER.set(launches)
    try:
        yield launches
    finally:
        _RECORDER.reset(token)


def _launch(kernel, grid: tuple, *args, **kwargs) -> None:  # noqa: ANN001
    launches = _RECORDER.get()
    if launches is not None:
        launches.append(KernelLaunch(kernel, tuple(grid), args, kwargs))
        return
    kernel[grid](*args, **kwargs)


def _require_triton(x: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError(f"triton_sep_half needs Triton, which could not be imported ({_TRITON_IMPORT_ERROR!r}); "
                           "install triton or use kernels='torch'")
    if x.device.type != "cuda" and not _interpreting():
        raise RuntimeError(f"triton_sep_half runs on CUDA tensors (got a {x.device.type} tensor); CPU tensors "
                           "work only under the Triton interpreter (TRITON_INTERPRET=1 set before importing triton)")


def _precision(x: torch.Tensor) -> str:
    if x.dtype == torch.float32 and x.device.type == "cuda" and not _interpreting() \
            and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def _upcast_dot(x: torch.Tensor) -> bool:
    # The interpreter's tl.dot multiplies the raw bit patterns of bfloat16 operands (triton-lang/triton#11584,
    # "not supported yet"); there the already-rounded bf16 operands are widened to fp32 (exact) instead.
    return x.dtype == torch.bfloat16 and _interpreting()


def _autocast_off(device: torch.device):  # noqa: ANN202
    """Autocast disabled for the split kernels' GEMMs (meta tensors, recorded launches: nothing to disable)."""
    return nullcontext() if device.type == "meta" else torch.autocast(device.type, enabled=False)


def _alignment(channels: tuple[int, ...], *tensors: torch.Tensor) -> int:
    """The largest power of two (at most 16) dividing the channel counts (input and output: the kernels state
    both as multiples of it) and every pixel stride (N, H, W) of the tensors: every pixel's offset in a kernel,
    and every row of a (rows, C) weight or scratch matrix, is then a multiple of it. The kernels pass it to
    Triton (``tl.multiple_of``), which otherwise knows only which integers are multiples of 16 and loads e.g.
    72-channel rows one element at a time instead of in vectors. (A stride can be 0, e.g. an expanded
    gradient: the channel counts are listed for themselves, not only through a channels-last stride.)"""
    values = list(channels) + [t.stride(d) for t in tensors for d in (0, 2, 3)]
    align = 16
    while align > 1 and any(v % align for v in values):
        align //= 2
    return align


def _out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _forward(x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor, bias: torch.Tensor | None,
             stride: int, pad: int, dil: int, relu: bool, cfg: KernelConfig | TorchKernels) -> torch.Tensor:
    """The forward kernel launch(es): (ReLU) -> depthwise -> pointwise + bias, channels-last output.
    ``dw_weight`` is laid out for ``cfg`` (:func:`depthwise_weight`)."""
    if isinstance(cfg, TorchKernels):
        return _torch_forward(x, dw_weight, pw_weight, bias, stride, pad, dil, relu)
    n, c, h, w = x.shape
    co = pw_weight.shape[0]
    kh, kw = dw_weight.shape[:2]
    ho, wo = _out_size(h, kh, stride, pad, dil), _out_size(w, kw, stride, pad, dil)
    y = torch.empty((n, co, ho, wo), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    p = n * ho * wo
    if p == 0 or co == 0:
        return y
    if c == 0:
        return y.copy_(bias.view(1, -1, 1, 1).expand_as(y)) if bias is not None else y.zero_()
    block_ci, block_co = _channel_block(c, cfg.block_ci), _channel_block(co, cfg.block_co)
    align = _alignment((c, co), x, y)
    if cfg.split:
        mid = torch.empty((p, c), device=x.device, dtype=x.dtype)  # channels-last (N, Ho, Wo, C) rows
        _launch(_depthwise_fwd, (triton.cdiv(p, cfg.block_p), triton.cdiv(c, block_ci)),
            x, dw_weight, mid, c, h, w, ho, wo, p, *x.stride(),
            STRIDE=stride, PAD=pad, DIL=dil, KH=kh, KW=kw, RELU=relu, BLOCK_P=cfg.block_p, BLOCK_C=block_ci,
            ALIGN=align, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        rows = y.permute(0, 2, 3, 1).view(p, co)  # y's channels-last storage as a (P, CO) matrix
        with _autocast_off(x.device):  # the GEMM in the input's dtype, as documented
            if bias is not None:
                torch.addmm(bias, mid, pw_weight.t(), out=rows)
            else:
                torch.mm(mid, pw_weight.t(), out=rows)
        return y
    grid = (triton.cdiv(p, cfg.block_p), triton.cdiv(co, block_co))
    _launch(_sep_half_fwd, grid,
        x, dw_weight, pw_weight, bias if bias is not None else pw_weight, y,
        c, h, w, co, ho, wo, p,
        *x.stride(), *y.stride(),
        STRIDE=stride, PAD=pad, DIL=dil, KH=kh, KW=kw,
        RELU=relu, HAS_BIAS=bias is not None, PRECISION=_precision(x), UPCAST_DOT=_upcast_dot(x),
        BLOCK_P=cfg.block_p, BLOCK_CI=block_ci, BLOCK_CO=block_co, ALIGN=align, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return y


def _input_grad(grad_out: torch.Tensor, x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor,
                stride: int, pad: int, dil: int, relu: bool, cfg: KernelConfig | TorchKernels) -> torch.Tensor:
    """The backward kernel launch(es): the gradient with respect to ``x`` (channels-last). ``dw_weight`` is laid
    out for ``cfg`` (:func:`depthwise_weight`)."""
    if isinstance(cfg, TorchKernels):
        return _torch_input_grad(grad_out, x, dw_weight, pw_weight, stride, pad, dil, relu)
    n, c, h, w = x.shape
    co = pw_weight.shape[0]
    ho, wo = grad_out.shape[-2:]
    kh, kw = dw_weight.shape[:2]
    grad_x = torch.empty((n, c, h, w), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    p = n * h * w
    if p == 0 or c == 0:
        return grad_x
    if co == 0:
        return grad_x.zero_()
    block_ci, block_co = _channel_block(c, cfg.block_ci), _channel_block(co, cfg.block_co)
    grid = (triton.cdiv(p, cfg.block_p), triton.cdiv(c, block_ci))
    align = _alignment((c, co), x, grad_out, grad_x)
    if cfg.split:
        rows = grad_out.permute(0, 2, 3, 1).reshape(n * ho * wo, co).to(pw_weight.dtype)  # a view if NHWC
        with _autocast_off(x.device):
            grad_mid = torch.mm(rows, pw_weight)  # (N*Ho*Wo, C) row-major
        _launch(_depthwise_bwd, grid,
            x, grad_mid, dw_weight, grad_x, c, h, w, ho, wo, p, *x.stride(), *grad_x.stride(),
            STRIDE=stride, PAD=pad, DIL=dil, KH=kh, KW=kw, RELU=relu, BLOCK_P=cfg.block_p, BLOCK_C=block_ci,
            ALIGN=align, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        return grad_x
    _launch(_sep_half_bwd, grid,
        x, grad_out, dw_weight, pw_weight, grad_x,
        c, h, w, co, ho, wo, p,
        *x.stride(), *grad_out.stride(), *grad_x.stride(),
        STRIDE=stride, PAD=pad, DIL=dil, KH=kh, KW=kw,
        RELU=relu, PRECISION=_precision(x), UPCAST_DOT=_upcast_dot(x),
        BLOCK_P=cfg.block_p, BLOCK_CI=block_ci, BLOCK_CO=block_co, ALIGN=align, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return grad_x


class _SepHalfFunction(torch.autograd.Function):
    """Eager autograd: the fused forward; the backward returns the gradient w.r.t. the input only (the weights
    are detached folded views)."""

    @staticmethod
    def forward(ctx, x, dw_weight, dw_weight_for_grad, pw_weight, bias,  # noqa: ANN001, ANN205
                stride, pad, dil, relu, configs):  # noqa: ANN001
        ctx.save_for_backward(x, dw_weight_for_grad, pw_weight)
        ctx.conf = (stride, pad, dil, relu, configs[1])
        return _forward(x, dw_weight, pw_weight, bias, stride, pad, dil, relu, configs[0])

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        if not ctx.needs_input_grad[0]:
            return (None,) * 10
        x, dw_weight, pw_weight = ctx.saved_tensors
        return (_input_grad(grad_out, x, dw_weight, pw_weight, *ctx.conf),) + (None,) * 9


@lru_cache(maxsize=None)
def _config(label: str) -> KernelConfig | TorchKernels:
    return TORCH_KERNELS if label == "torch" else KernelConfig.from_label(label)


def _torch_forward(x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: int, pad: int, dil: int, relu: bool) -> torch.Tensor:
    """The forward with PyTorch's convolutions, in the input's dtype (what the fused kernel computes);
    ``dw_weight`` in conv2d's (C, 1, KH, KW) layout."""
    with _autocast_off(x.device):
        if relu:
            x = torch.relu(x)
        mid = torch.nn.functional.conv2d(x, dw_weight, None, stride, pad, dil, x.shape[1])
        y = torch.nn.functional.conv2d(mid, pw_weight[:, :, None, None], bias)
    return y.contiguous(memory_format=torch.channels_last)


def _torch_input_grad(grad_out: torch.Tensor, x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor,
                      stride: int, pad: int, dil: int, relu: bool) -> torch.Tensor:
    """The input gradient with PyTorch's convolution backward kernels (the ones autograd runs for
    :func:`~robnets.acceleration.fast_robnet.torch_sep_half`), then the ReLU mask; ``dw_weight`` in conv2d's
    (C, 1, KH, KW) layout."""
    n, c = x.shape[:2]
    with _autocast_off(x.device):
        grad_out = grad_out.to(x.dtype)
        mid_shape = (n, c, grad_out.shape[2], grad_out.shape[3])
        grad_mid = torch.nn.grad.conv2d_input(mid_shape, pw_weight[:, :, None, None], grad_out)
        grad_x = torch.nn.grad.conv2d_input(x.shape, dw_weight, grad_mid, stride, pad, dil, c)
        if relu:
            grad_x = torch.ops.aten.threshold_backward(grad_x, x, 0)
    return grad_x.contiguous(memory_format=torch.channels_last)


def _define_custom_ops() -> None:
    """The same launches as opaque PyTorch operators, for ``torch.compile``: Dynamo cannot trace a Triton launch
    from Python (it reads data pointers), so under compilation :func:`triton_sep_half` calls
    ``torch.ops.robnets.triton_sep_half`` (shapes from a fake implementation, the input gradient through
    ``robnets::triton_sep_half_input_grad``) and Inductor fuses the element-wise work around the kernels.
    Defined once per process (a second definition of a ``robnets::`` operator is an error)."""
    if hasattr(torch.ops.robnets, "triton_sep_half"):
        return

    @torch.library.custom_op("robnets::triton_sep_half", mutates_args=())
    def sep_half(x: torch.Tensor, dw_weight: torch.Tensor, dw_weight_for_grad: torch.Tensor, pw_weight: torch.Tensor,
                 bias: torch.Tensor | None, stride: int, pad: int, dil: int, relu: bool, forward_config: str,
                 backward_config: str) -> torch.Tensor:
        return _forward(x, dw_weight, pw_weight, bias, stride, pad, dil, relu, _config(forward_config))

    @sep_half.register_fake
    def _(x, dw_weight, dw_weight_for_grad, pw_weight, bias,  # noqa: ANN001, ANN202, ARG001
          stride, pad, dil, relu, forward_config, backward_config):  # noqa: ANN001, ARG001
        n, _, h, w = x.shape
        kh, kw = _kernel_size(dw_weight)
        shape = (n, pw_weight.shape[0], _out_size(h, kh, stride, pad, dil), _out_size(w, kw, stride, pad, dil))
        return torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)

    @torch.library.custom_op("robnets::triton_sep_half_input_grad", mutates_args=())
    def input_grad(grad_out: torch.Tensor, x: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor,
                   stride: int, pad: int, dil: int, relu: bool, backward_config: str) -> torch.Tensor:
        return _input_grad(grad_out, x, dw_weight, pw_weight, stride, pad, dil, relu, _config(backward_config))

    @input_grad.register_fake
    def _(grad_out, x, dw_weight, pw_weight, stride, pad, dil, relu, backward_config):  # noqa: ANN001, ANN202, ARG001
        return torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)

    def setup_context(ctx, inputs, output):  # noqa: ANN001, ANN202, ARG001
        x, _dw_weight, dw_weight, pw_weight, _bias, stride, pad, dil, relu, _forward_config, backward_config = inputs
        ctx.save_for_backward(x, dw_weight, pw_weight)
        ctx.conf = (stride, pad, dil, relu, backward_config)

    def backward(ctx, grad_out):  # noqa: ANN001, ANN202
        grad_x = None
        if ctx.needs_input_grad[0]:
            x, dw_weight, pw_weight = ctx.saved_tensors
            grad_x = torch.ops.robnets.triton_sep_half_input_grad(grad_out, x, dw_weight, pw_weight, *ctx.conf)
        return (grad_x,) + (None,) * 10

    sep_half.register_autograd(backward, setup_context=setup_context)


if triton is not None:
    _define_custom_ops()


def _square(value, name: str) -> int:  # noqa: ANN001
    a, b = (value, value) if isinstance(value, int) else tuple(value)
    if a != b:
        raise ValueError(f"triton_sep_half needs a square {name}, got {tuple(value)}")
    return int(a)


def _kernel_size(dw_weight: torch.Tensor) -> tuple[int, int]:
    """(KH, KW) of a depthwise weight in either layout: conv2d's (C, 1, KH, KW) or tap-major (KH, KW, C)."""
    return tuple(dw_weight.shape[-2:]) if dw_weight.dim() == 4 else tuple(dw_weight.shape[:2])


def depthwise_weight(x: torch.Tensor, depthwise: nn.Conv2d | FoldedConv, cfg: KernelConfig | TorchKernels
                     ) -> torch.Tensor:
    """The depthwise weight in the input's dtype, laid out for ``cfg``: tap-major (KH, KW, C) for a Triton tiling
    (each tap's weights contiguous over channels, loaded as vectors), conv2d's (C, 1, KH, KW) for PyTorch's
    kernels. The engine's depthwise convs are :class:`FoldedConv` objects, which keep both between calls
    (re-derived when the weights change); a bare ``nn.Conv2d`` is converted on every call."""
    layout = None if isinstance(cfg, TorchKernels) else "tap_major"
    if isinstance(depthwise, FoldedConv):
        # compiled regions read the tensors as refreshed eagerly for this call (FoldedConv.cached)
        return (depthwise.cached if torch.compiler.is_compiling() else depthwise.parameters)(x.dtype, layout)[0]
    weight = depthwise.weight.detach().to(x.dtype)
    return weight.contiguous() if layout is None else LAYOUTS[layout](weight)


def pointwise_weights(x: torch.Tensor, pointwise: FoldedConv) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The folded pointwise weight as a (CO, C) matrix and the folded bias (or None), in the input's dtype."""
    weight, bias = (pointwise.cached if torch.compiler.is_compiling() else pointwise.parameters)(x.dtype)
    return weight.reshape(weight.shape[0], x.shape[1]).contiguous(), bias  # a view: the folded weight is contiguous


def triton_sep_half(x: torch.Tensor, depthwise: nn.Conv2d | FoldedConv, pointwise: FoldedConv, relu: bool, *,
                    forward_config: KernelConfig | None = None,
                    backward_config: KernelConfig | None = None) -> torch.Tensor:
    """(ReLU) -> depthwise KxK -> pointwise 1x1 with folded BN, as one fused Triton kernel (channels-last out).

    Same signature and result as :func:`~robnets.acceleration.fast_robnet.torch_sep_half`; differentiable
    with respect to ``x`` only. ``forward_config`` / ``backward_config`` override the tile sizes and launch
    settings of each kernel (default :data:`DEFAULT_FORWARD_CONFIG` / :data:`DEFAULT_BACKWARD_CONFIG`; every
    configuration computes the same function).
    """
    configs = (forward_config or DEFAULT_FORWARD_CONFIG, backward_config or DEFAULT_BACKWARD_CONFIG)
    for cfg in configs:
        if not isinstance(cfg, (KernelConfig, TorchKernels)):
            raise TypeError(f"kernel configurations are KernelConfig (or TorchKernels) objects, got "
                            f"{type(cfg).__name__}")
    if any(isinstance(cfg, KernelConfig) for cfg in configs):
        _require_triton(x)
    if x.dim() != 4:
        raise ValueError(f"triton_sep_half expects an NCHW tensor, got shape {tuple(x.shape)}")
    c = x.shape[1]
    dw_weights, depthwise = depthwise, conv_of(depthwise)
    if not (depthwise.groups == depthwise.in_channels == depthwise.out_channels == c):
        raise ValueError("triton_sep_half needs a depthwise conv (groups == in == out channels == input channels), "
                         f"got {depthwise} for {c} input channels")
    if depthwise.padding_mode != "zeros" or isinstance(depthwise.padding, str):
        raise ValueError(f"triton_sep_half needs explicit zero padding, got {depthwise}")
    pconv = pointwise.conv
    if (tuple(pconv.kernel_size) != (1, 1) or tuple(pconv.stride) != (1, 1) or pconv.groups != 1
            or tuple(pconv.padding) != (0, 0) or pconv.in_channels != c):
        raise ValueError(f"triton_sep_half needs a dense 1x1 pointwise conv over {c} channels, got {pconv}")
    if not x.is_floating_point() or x.dtype == torch.float64:
        raise ValueError(f"triton_sep_half supports float32, bfloat16 and float16 inputs, got {x.dtype}")
    stride = _square(depthwise.stride, "stride")
    pad = _square(depthwise.padding, "padding")
    dil = _square(depthwise.dilation, "dilation")

    dw_forward = depthwise_weight(x, dw_weights, configs[0])
    # one lookup (a source-version check) per call when both directions read the same layout
    same_layout = isinstance(configs[0], TorchKernels) == isinstance(configs[1], TorchKernels)
    dw_backward = dw_forward if same_layout else depthwise_weight(x, dw_weights, configs[1])
    pw_weight, bias = pointwise_weights(x, pointwise)
    if x.device.type == "cuda":
        for t in (dw_forward, dw_backward, pw_weight, bias):
            if t is not None and t.device != x.device:
                raise ValueError(f"weights on {t.device}, input on {x.device}")
    if relu:
        observe_relu_input(x)  # lets numerics.compare_with_float64 see the ReLU applied inside the kernel
    if torch.compiler.is_compiling():
        return torch.ops.robnets.triton_sep_half(x, dw_forward, dw_backward, pw_weight, bias, stride, pad, dil,
                                                 bool(relu), configs[0].label(), configs[1].label())
    return _SepHalfFunction.apply(x, dw_forward, dw_backward, pw_weight, bias, stride, pad, dil, bool(relu), configs)
