"""Per-layer timing of the separable-conv halves: PyTorch kernels against the fused Triton kernels.

A RobNet attack step spends most of its time in separable-conv halves (ReLU -> depthwise 3x3 -> pointwise 1x1 +
folded BN), a few distinct shapes repeated many times. :func:`sep_half_shapes` lists those shapes with their
counts by running the fast engine once on a tiny batch; :func:`time_sep_half` times one shape's forward and
input-gradient backward for one implementation; :func:`sweep` does that for PyTorch's kernels and for each
Triton :class:`~robnets.acceleration.triton_sepconv.KernelConfig`, so a GPU session can see per shape which
tiling comes closest to memory speed and what the whole step would cost (``benchmarks/sepconv_kernels.py``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..models import create_model
from .fast_robnet import FastRobNet, torch_sep_half
from .folding import FoldedConv, conv_of


# Tilings benchmarks/sepconv_kernels.py sweeps (each timed forward and backward; the summary takes the best of
# each direction). Each compiles for sm_90 at robnet_free's shapes (bf16) without register spills and with vector
# loads in the direction it is a candidate for
# (benchmarks/triton_static.py, results/triton-static.md): fused forward candidates (16-channel chunks, 1-3
# stages, 64-256 output channels per program), fused backward candidates (16-256 channels per program: with all
# of them in one program grad_out is gathered once per pixel tile, not once per channel block; 16-32 output
# channels per reduction chunk) and four split ones (Triton depthwise + cuBLAS 1x1).
SWEEP_SPLIT = ("p32-ci32-co64-w2-s1-split", "p32-ci64-co64-w4-s1-split", "p64-ci64-co64-w8-s1-split",
               "p128-ci32-co64-w8-s1-split")
SWEEP_FORWARD = ("p64-ci16-co64-w4-s2", "p64-ci16-co64-w4-s1", "p64-ci16-co64-w4-s3", "p32-ci16-co128-w4-s2",
                 "p128-ci16-co64-w8-s2", "p64-ci16-co256-w8-s2") + SWEEP_SPLIT
SWEEP_BACKWARD = ("p32-ci64-co32-w4-s1", "p32-ci32-co32-w4-s1", "p64-ci64-co16-w4-s1", "p64-ci32-co32-w4-s1",
                  "p128-ci64-co32-w8-s1", "p32-ci256-co32-w8-s1") + SWEEP_SPLIT
SWEEP_LABELS = SWEEP_FORWARD[:6] + SWEEP_BACKWARD[:6] + SWEEP_SPLIT


def kernel_configs(text: str) -> list:
    """``none``, ``default`` (the default forward and backward tilings), ``sweep`` or a comma list of labels ->
    KernelConfig objects."""
    from .triton_sepconv import DEFAULT_BACKWARD_CONFIG, DEFAULT_FORWARD_CONFIG, KernelConfig

    if text == "none":
        return []
    if text == "default":
        return [DEFAULT_FORWARD_CONFIG, DEFAULT_BACKWARD_CONFIG]
    labels = SWEEP_LABELS if text == "sweep" else [t.strip() for t in text.split(",") if t.strip()]
    return [KernelConfig.from_label(label) for label in labels]


@dataclass(frozen=True)
class SepHalfShape:
    """One separable-conv half as the engine calls it (batch size included), and how often per forward."""

    n: int
    c: int
    c_out: int
    h: int
    w: int
    stride: int
    relu: bool
    count: int = 1

    @property
    def out_hw(self) -> tuple[int, int]:
        return (self.h - 1) // self.stride + 1, (self.w - 1) // self.stride + 1

    def label(self) -> str:
        return (f"{self.c}->{self.c_out} {self.h}x{self.w}/{self.stride}{' relu' if self.relu else ''}")

    def forward_bytes(self, element_size: int) -> int:
        """Bytes a fused forward must move at least: read the input, write the output (weights negligible)."""
        ho, wo = self.out_hw
        return element_size * self.n * (self.c * self.h * self.w + self.c_out * ho * wo)

    def backward_bytes(self, element_size: int) -> int:
        """A fused input-gradient backward: read grad_out (and the input, for the ReLU mask), write grad_x."""
        ho, wo = self.out_hw
        reads_input = self.c * self.h * self.w if self.relu else 0
        return element_size * self.n * (self.c_out * ho * wo + self.c * self.h * self.w + reads_input)


def sep_half_shapes(model_name: str, batch_size: int, **model_kwargs) -> list[SepHalfShape]:
    """Distinct separable-conv-half shapes of one forward of ``model_name`` at ``batch_size``, with counts.

    Runs the fast engine once on a 1-image CPU batch, recording each half's input shape, output channels,
    stride and ReLU (the shapes scale with the batch only in ``n``)."""
    model = create_model(model_name, **model_kwargs).eval()
    engine = FastRobNet(model)
    seen: Counter = Counter()

    def recording(x: torch.Tensor, depthwise: nn.Conv2d | FoldedConv, pointwise: FoldedConv, relu: bool) -> torch.Tensor:
        _, c, h, w = x.shape
        seen[(c, pointwise.conv.out_channels, h, w, int(conv_of(depthwise).stride[0]), bool(relu))] += 1
        return torch_sep_half(x, depthwise, pointwise, relu)

    engine._half = recording
    size = 224 if getattr(model, "_imagenet_stem", False) else 32
    with torch.no_grad():
        engine(torch.rand(1, 3, size, size))
    return [SepHalfShape(batch_size, *key, count=count) for key, count in sorted(seen.items(), key=lambda kv: -kv[1])]


def make_half(shape: SepHalfShape, device: torch.device, dtype: torch.dtype,
              seed: int = 0) -> tuple[torch.Tensor, nn.Conv2d, FoldedConv]:
    """A random channels-last input and a depthwise conv + folded pointwise conv/BN of this shape."""
    g = torch.Generator().manual_seed(seed)
    depthwise = nn.Conv2d(shape.c, shape.c, 3, stride=shape.stride, padding=1, groups=shape.c, bias=False)
    conv = nn.Conv2d(shape.c, shape.c_out, 1, bias=False)
    norm = nn.BatchNorm2d(shape.c_out).eval()
    with torch.no_grad():
        for m in (depthwise, conv):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.2)
        norm.running_mean.copy_(torch.randn(shape.c_out, generator=g) * 0.1)
        norm.running_var.copy_(torch.rand(shape.c_out, generator=g) + 0.5)
    for m in (depthwise, conv, norm):
        m.to(device)
    x = torch.randn(shape.n, shape.c, shape.h, shape.w, generator=g).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last), depthwise, FoldedConv(conv, norm)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sep_half(shape: SepHalfShape, half: Callable, device: torch.device, dtype: torch.dtype = torch.float32,
                  iters: int = 20, warmup: int = 3) -> tuple[float, float]:
    """(forward, backward) seconds per call of ``half`` on this shape: the forward without autograd, the
    input-gradient backward alone (one recorded forward, its graph replayed ``iters`` times)."""
    x, depthwise, pointwise = make_half(shape, device, dtype)
    # bf16: the PyTorch path runs under autocast, as the engine does; the Triton kernels cast their weights
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                else torch.autocast(device.type, enabled=False))
    with torch.no_grad(), autocast:
        for _ in range(warmup):
            half(x, depthwise, pointwise, shape.relu)
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            half(x, depthwise, pointwise, shape.relu)
        _sync(device)
        forward = (time.perf_counter() - start) / iters
    xg = x.detach().requires_grad_(True)
    with autocast:
        out = half(xg, depthwise, pointwise, shape.relu)
    grad_out = torch.randn_like(out)
    for _ in range(warmup):
        torch.autograd.grad(out, xg, grad_out, retain_graph=True)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        torch.autograd.grad(out, xg, grad_out, retain_graph=True)
    _sync(device)
    return forward, (time.perf_counter() - start) / iters


@dataclass
class KernelTiming:
    shape: SepHalfShape
    path: str  # 'torch' or a Triton config label ('triton:p64-ci64-co64-w4-s1')
    forward_us: float
    backward_us: float
    forward_gbs: float
    backward_gbs: float

    def to_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = asdict(self.shape)
        return out


def sweep(shapes: Sequence[SepHalfShape], device: torch.device, dtype: torch.dtype = torch.float32,
          configs: Sequence = (), iters: int = 20, log: Callable[[str], None] = print,
          budget_s: float | None = None) -> list[KernelTiming]:
    """Time PyTorch's kernels and each Triton config on every shape (Triton only on CUDA), the most frequent
    shape first. ``budget_s``: start no new timing after that many seconds (each Triton config compiles
    first), so a capped run still returns what it measured."""
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    element = torch.empty((), dtype=dtype).element_size()
    paths: list[tuple[str, Callable]] = [("torch", torch_sep_half)]
    if configs:
        from functools import partial

        from .triton_sepconv import triton_sep_half

        for cfg in configs:
            paths.append((f"triton:{cfg.label()}", partial(triton_sep_half, forward_config=cfg, backward_config=cfg)))
    out = []
    for shape in shapes:
        for name, half in paths:
            if deadline is not None and time.perf_counter() > deadline:
                log(f"  time budget of {budget_s:.0f} s spent: stopping before {shape.label()} {name}")
                return out
            try:
                fwd, bwd = time_sep_half(shape, half, device, dtype, iters=iters)
            except Exception as exc:  # noqa: BLE001 - a config that does not launch (shared memory) is a result
                log(f"  {shape.label():24s} {name:32s} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}")
                continue
            t = KernelTiming(shape, name, fwd * 1e6, bwd * 1e6, shape.forward_bytes(element) / fwd / 1e9,
                             shape.backward_bytes(element) / bwd / 1e9)
            log(f"  {shape.label():24s} x{shape.count:<3d} {name:32s} fwd {t.forward_us:9.1f} us "
                f"({t.forward_gbs:6.0f} GB/s)  bwd {t.backward_us:9.1f} us ({t.backward_gbs:6.0f} GB/s)")
            out.append(t)
    return out


def summary_table(timings: Sequence[KernelTiming]) -> str:
    """Per shape: PyTorch against the best Triton config (forward and backward chosen separately), and the
    whole forward + backward of one attack step weighted by each shape's count."""
    by_shape: dict[SepHalfShape, list[KernelTiming]] = {}
    for t in timings:
        by_shape.setdefault(t.shape, []).append(t)
    lines = ["| shape (C_in->C_out HxW/stride) | count | torch fwd / bwd us | best Triton fwd | best Triton bwd |",
             "|---|---:|---:|---|---|"]
    totals = {"torch": 0.0, "triton": 0.0}
    for shape, rows in by_shape.items():
        torch_row = next((r for r in rows if r.path == "torch"), None)
        tri = [r for r in rows if r.path != "torch"]
        best_f = min(tri, key=lambda r: r.forward_us, default=None)
        best_b = min(tri, key=lambda r: r.backward_us, default=None)
        cell = lambda r, f: "—" if r is None else f(r)  # noqa: E731
        lines.append(
            f"| {shape.label()} | {shape.count} | "
            + cell(torch_row, lambda r: f"{r.forward_us:.1f} / {r.backward_us:.1f}") + " | "
            + cell(best_f, lambda r: f"{r.forward_us:.1f} us, {r.forward_gbs:.0f} GB/s ({r.path[7:]})") + " | "
            + cell(best_b, lambda r: f"{r.backward_us:.1f} us, {r.backward_gbs:.0f} GB/s ({r.path[7:]})") + " |")
        if torch_row is not None:
            totals["torch"] += shape.count * (torch_row.forward_us + torch_row.backward_us)
        if best_f is not None and best_b is not None:
            totals["triton"] += shape.count * (best_f.forward_us + best_b.backward_us)
    lines.append("")
    lines.append(f"One attack step's separable-conv halves (forward + input gradient, counts applied): PyTorch "
                 f"{totals['torch'] / 1e3:.2f} ms" + (f", best Triton configs {totals['triton'] / 1e3:.2f} ms"
                                                     if totals["triton"] else ""))
    return "\n".join(lines)


def write_results(path: str | Path, meta: dict, key: str, items: list, table: str) -> Path:
    """A benchmark's results: ``path`` as JSON (``meta`` plus ``items`` under ``key``) and the table beside it
    (``.md``), folders created. Returns the JSON path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}
    path.write_text(json.dumps({"meta": meta, key: items}, indent=1))
    path.with_suffix(".md").write_text(table + "\n")
    return path
