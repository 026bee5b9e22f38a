"""What the Triton separable-conv kernels compile to on an H100/H200, found without a GPU.

A GPU hour is scarce; register spills, low occupancy and unvectorised loads are visible before any kernel runs.
Triton compiles ahead of time for any target (``triton.compile`` with a ``GPUTarget``, its bundled ``ptxas``
and ``cuobjdump``), so this module:

* records the launches :func:`~robnets.acceleration.triton_sepconv.triton_sep_half` makes for one layer shape and
  :class:`~robnets.acceleration.triton_sepconv.KernelConfig` (forward and input-gradient backward, on meta
  tensors: the very arguments, strides and constexprs a GPU run would pass);
* specialises them as Triton's launcher does (integers equal to 1 become constants, pointers and integers
  divisible by 16 are marked so) and compiles them for ``sm_90``;
* reads the cubin: registers per thread, stack (local memory: spills), shared memory, the number of SASS
  instructions, local (spill) loads and stores, global loads by width (128-bit loads are 4 fp32 / 8 bf16 lanes
  of one thread), and from those the occupancy an H100/H200 SM allows.

``benchmarks/triton_static.py`` prints the table for a model's shapes and a sweep of tilings. The numbers are
what the hardware will be handed, not a speed: that still needs the GPU (``benchmarks/sepconv_kernels.py``).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .sepconv_bench import SepHalfShape
from .triton_sepconv import KernelConfig, KernelLaunch, recording_launches, triton

__all__ = ["KernelResources", "analyse", "compile_launch", "record_sep_half_launches", "resources",
           "resource_table", "static_analysis_available"]

# Hopper (sm_90: H100, H200) per-SM limits, CUDA occupancy calculator values.
_SM90 = dict(registers=65536, register_unit=256, max_warps=64, max_blocks=32, shared=233472, reserved_shared=1024)


def static_analysis_available() -> tuple[bool, str]:
    """(True, '') when Triton and its bundled CUDA tools can compile for sm_90 here; else (False, why)."""
    if triton is None:
        return False, "triton is not installed"
    try:
        from triton import knobs

        for tool in (knobs.nvidia.ptxas, knobs.nvidia.cuobjdump):
            if not Path(tool.path).is_file():
                return False, f"Triton's {Path(tool.path).name} is missing"
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot compile ahead of time"
        return False, f"Triton's CUDA tools are unavailable ({exc})"
    return True, ""


@dataclass(frozen=True)
class KernelResources:
    """What one compiled kernel asks of an SM, and what its SASS does."""

    kernel: str
    direction: str  # "forward" or "backward"
    config: str
    registers: int
    stack_bytes: int
    shared_bytes: int
    num_warps: int
    instructions: int
    local_loads: int  # LDL: spill reloads (and local arrays)
    local_stores: int  # STL
    global_loads: dict  # width in bits -> number of LDG instructions
    blocks_per_sm: int
    occupancy: float  # resident warps / 64

    @property
    def spills(self) -> bool:
        return self.local_loads + self.local_stores > 0 or self.stack_bytes > 0

    def as_dict(self) -> dict:
        return asdict(self)


def record_sep_half_launches(shape: SepHalfShape, dtype: torch.dtype, forward_config: KernelConfig,
                             backward_config: KernelConfig) -> list[tuple[str, KernelLaunch]]:
    """The Triton launches (``("forward" | "backward", launch)``) of one separable-conv half's forward and
    input gradient, recorded on meta tensors with the engine's channels-last layout."""
    from .triton_sepconv import _forward, _input_grad

    cl = torch.channels_last
    x = torch.empty(shape.n, shape.c, shape.h, shape.w, device="meta", dtype=dtype, memory_format=cl)
    dw = torch.empty(3, 3, shape.c, device="meta", dtype=dtype)  # (KH, KW, C), as triton_sep_half passes it
    pw = torch.empty(shape.c_out, shape.c, device="meta", dtype=dtype)
    bias = torch.empty(shape.c_out, device="meta", dtype=dtype)
    with recording_launches() as launches:
        y = _forward(x, dw, pw, bias, shape.stride, 1, 1, shape.relu, forward_config)
        n_forward = len(launches)
        grad_out = torch.empty(y.shape, device="meta", dtype=dtype, memory_format=cl)
        _input_grad(grad_out, x, dw, pw, shape.stride, 1, 1, shape.relu, backward_config)
    return [("forward" if i < n_forward else "backward", launch) for i, launch in enumerate(launches)]


def compile_launch(launch: KernelLaunch, arch: int = 90, precision: str = "tf32"):  # noqa: ANN201
    """Compile one recorded launch for ``sm_<arch>`` as Triton's launcher would specialise it.

    ``precision`` replaces the kernel's ``PRECISION`` for fp32 launches recorded off the GPU (there the
    recorder sees IEEE; on a GPU PyTorch's default allows TF32)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    fn = launch.kernel
    options = {k: v for k, v in launch.kwargs.items() if k in ("num_warps", "num_stages")}
    bound = dict(zip(fn.arg_names, launch.args))
    bound.update({k: v for k, v in launch.kwargs.items() if k not in options})
    if "PRECISION" in bound and bound["PRECISION"] == "ieee" and bound.get("x_ptr") is not None \
            and bound["x_ptr"].dtype == torch.float32:
        bound["PRECISION"] = precision
    target = GPUTarget("cuda", arch, 32)
    backend = CUDABackend(target)
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        value = bound[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[(i,)] = value
            continue
        kind, key = native_specialize_impl(CUDABackend, value, False, not param.do_not_specialize,
                                           not param.do_not_specialize_on_alignment)
        if kind == "constexpr":
            signature[param.name] = "constexpr"
            constexprs[(i,)] = key
            continue
        signature[param.name] = kind
        if isinstance(key, str):
            attrs[(i,)] = backend.parse_attr(key)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options)


_SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")


def resources(compiled, direction: str = "", config: str = "") -> KernelResources:  # noqa: ANN001
    """Registers, stack, shared memory, SASS instruction mix and sm_90 occupancy of a compiled kernel."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", str(cubin)], check=True,
                               capture_output=True, text=True).stdout
        sass = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", str(cubin)], check=True,
                              capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    registers, stack = int(fields.get("REG", 0)), int(fields.get("STACK", 0))
    shared = max(int(fields.get("SHARED", 0)), int(getattr(compiled.metadata, "shared", 0) or 0))
    ops = Counter(m.group(1) for m in _SASS_LINE.finditer(sass))
    global_loads: Counter = Counter()
    for op, count in ops.items():
        head, *suffixes = op.split(".")
        if head not in ("LDG", "LDGSTS"):  # global loads, direct or asynchronous into shared memory (not LDGDEPBAR)
            continue
        width = 32
        for suffix in suffixes:
            width = {"64": 64, "128": 128, "U8": 8, "S8": 8, "U16": 16, "S16": 16}.get(suffix, width)
        global_loads[width] += count
    warps = int(compiled.metadata.num_warps)
    blocks = occupancy_blocks(registers, warps, shared)
    return KernelResources(
        kernel=compiled.metadata.name, direction=direction, config=config, registers=registers, stack_bytes=stack,
        shared_bytes=shared, num_warps=warps, instructions=sum(ops.values()),
        local_loads=sum(c for op, c in ops.items() if op.startswith("LDL")),
        local_stores=sum(c for op, c in ops.items() if op.startswith("STL")),
        global_loads=dict(sorted(global_loads.items(), reverse=True)), blocks_per_sm=blocks,
        occupancy=blocks * warps / _SM90["max_warps"])


def occupancy_blocks(registers: int, num_warps: int, shared_bytes: int) -> int:
    """Thread blocks one sm_90 SM can hold at once (registers allocated per warp in units of 256)."""
    unit = _SM90["register_unit"]
    per_warp = -(-max(registers, 1) * 32 // unit) * unit
    by_registers = _SM90["registers"] // (per_warp * num_warps)
    by_warps = _SM90["max_warps"] // num_warps
    by_shared = (_SM90["shared"] // (shared_bytes + _SM90["reserved_shared"])) if shared_bytes else _SM90["max_blocks"]
    return max(0, min(by_registers, by_warps, by_shared, _SM90["max_blocks"]))


def analyse(shapes: Sequence[SepHalfShape], configs: Sequence[KernelConfig | tuple], dtype: torch.dtype,
            arch: int = 90, precision: str = "tf32", directions: Sequence[str] = ("forward", "backward"),
            progress=None) -> list[dict]:  # noqa: ANN001
    """For each shape and configuration: one row per Triton kernel of the ``directions`` asked for. A
    configuration is a KernelConfig (used for the forward and the backward) or a (forward, backward) pair."""
    rows = []
    for shape in shapes:
        for cfg in configs:
            pair = cfg if isinstance(cfg, tuple) else (cfg, cfg)
            for direction, launch in record_sep_half_launches(shape, dtype, *pair):
                if direction not in directions:
                    continue
                used = pair[0] if direction == "forward" else pair[1]
                res = resources(compile_launch(launch, arch, precision), direction, used.label())
                rows.append({"shape": shape.label(), "count": shape.count, "grid": list(launch.grid), **res.as_dict()})
                if progress is not None:
                    progress(rows[-1])
    return rows


def resource_table(rows: Sequence[dict]) -> str:
    """A markdown table of :func:`analyse` rows."""
    lines = ["| shape | config | kernel | regs | stack B | spill ld/st | shared KB | warps | SM occupancy | "
             "SASS instr | global loads (bits: count) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        loads = ", ".join(f"{w}: {c}" for w, c in r["global_loads"].items())
        lines.append(f"| {r['shape']} | {r['config']} | {r['kernel']} ({r['direction']}) | {r['registers']} | "
                     f"{r['stack_bytes']} | {r['local_loads']}/{r['local_stores']} | {r['shared_bytes'] / 1024:.1f} | "
                     f"{r['num_warps']} | {r['occupancy']:.0%} ({r['blocks_per_sm']} blocks) | {r['instructions']} | "
                     f"{loads} |")
    return "\n".join(lines)
