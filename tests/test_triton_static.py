"""The Triton separable-conv kernels as an H100/H200 would get them, checked on the CPU.

``robnets.acceleration.triton_static`` records the launches ``triton_sep_half`` makes (on meta tensors) and
compiles them ahead of time for sm_90 with Triton's bundled ``ptxas``. These tests hold the kernels to what a
memory-bound kernel needs before any GPU time is spent: no register spills, and activations loaded as vectors
(a lost alignment hint made the fused backward load grad_out one bf16 element at a time, 288 loads per thread).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

_HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not _HAS_TRITON, reason="triton is not installed (the fused kernels are optional)")


def _require_static_analysis():
    from robnets.acceleration.triton_static import static_analysis_available

    ok, why = static_analysis_available()
    if not ok:
        pytest.skip(f"cannot compile Triton kernels ahead of time here: {why}")


def _wide_load_share(global_loads: dict) -> float:
    """Share of the bits a thread loads from global memory that come in 64- or 128-bit instructions."""
    bits = {int(w): int(w) * c for w, c in global_loads.items()}
    total = sum(bits.values())
    return sum(b for w, b in bits.items() if w >= 64) / total if total else 1.0


def test_alignment_is_the_power_of_two_dividing_channels_and_pixel_strides():
    from robnets.acceleration.triton_sepconv import _alignment

    cl = torch.channels_last
    x72 = torch.empty(2, 72, 16, 16, device="meta", memory_format=cl)
    assert _alignment((72, 72), x72) == 8  # strides 18432, 1152, 72: 72 = 8 * 9
    x144 = torch.empty(2, 144, 8, 8, device="meta", memory_format=cl)
    assert _alignment((144, 144), x144) == 16  # capped at 16
    assert _alignment((144, 36), x144) == 4  # the output channels count too
    x36 = torch.empty(2, 36, 32, 32, device="meta", memory_format=cl)
    assert _alignment((36,), x36) == 4
    assert _alignment((72,), torch.empty(2, 72, 7, 7, device="meta")) == 1  # NCHW: the W stride is 1
    sliced = torch.empty(2, 48, 8, 8, device="meta", memory_format=cl)[:, ::2]  # 24 channels, stride 2
    assert _alignment((24,), sliced) == 8 and _alignment((24,), sliced, x36) == 4
    expanded = torch.empty(1, 1, 1, 1, device="meta").expand(2, 12, 8, 8)  # e.g. the gradient of a sum: strides 0
    assert _alignment((8, 12), expanded) == 4
    # every pixel offset and every weight row is then a multiple of it
    for t, c in ((x72, 72), (x144, 144), (sliced, 24)):
        a = _alignment((c,), t)
        assert c % a == 0 and all(t.stride(d) % a == 0 for d in (0, 2, 3))


def test_recorded_launches_are_the_kernels_triton_sep_half_runs():
    """Meta tensors record the forward and input-gradient launches, with the engine's grids and constants."""
    from robnets.acceleration.sepconv_bench import SepHalfShape
    from robnets.acceleration.triton_sepconv import KernelConfig
    from robnets.acceleration.triton_static import record_sep_half_launches

    shape = SepHalfShape(n=4, c=72, c_out=72, h=16, w=16, stride=2, relu=True)
    fused = KernelConfig(block_p=64, block_ci=16, block_co=64)
    launches = record_sep_half_launches(shape, torch.bfloat16, fused, KernelConfig(block_p=32, block_ci=32,
                                                                                    block_co=32))
    assert [(d, launch.kernel.fn.__name__) for d, launch in launches] == [("forward", "_sep_half_fwd"),
                                                                          ("backward", "_sep_half_bwd")]
    forward, backward = launches[0][1], launches[1][1]
    assert forward.grid == (4 * 8 * 8 // 64, 72 // 64 + 1)  # output pixels / BLOCK_P, output channels / BLOCK_CO
    assert backward.grid == (4 * 16 * 16 // 32, 72 // 32 + 1)  # input pixels, input channels
    assert forward.kwargs["ALIGN"] == backward.kwargs["ALIGN"] == 8
    assert forward.kwargs["STRIDE"] == 2 and forward.kwargs["RELU"] and forward.kwargs["num_warps"] == 4
    split = KernelConfig(split=True)
    names = [launch.kernel.fn.__name__ for _, launch in record_sep_half_launches(shape, torch.float32, split, split)]
    assert names == ["_depthwise_fwd", "_depthwise_bwd"]  # the 1x1 products are cuBLAS GEMMs, not recorded


def test_occupancy_follows_the_sm90_register_file():
    from robnets.acceleration.triton_static import occupancy_blocks

    assert occupancy_blocks(255, 4, 0) == 2  # 255 regs -> 8192 per warp; 65536 / (4 * 8192)
    assert occupancy_blocks(128, 4, 0) == 4  # 4096 per warp: 16 warps of 64 -> 25 %
    assert occupancy_blocks(32, 4, 0) == 16  # warps limit: 64 / 4
    assert occupancy_blocks(64, 4, 100 * 1024) == 2  # shared memory: 228 KB / (100 KB + 1 KB reserved)


@pytest.mark.parametrize("dtype, channels, size", [(torch.bfloat16, 72, 16), (torch.float32, 144, 8)])
def test_default_kernels_compile_for_hopper_without_spills_and_with_vector_loads(dtype, channels, size):
    """The default forward and backward tilings and the split kernels, compiled for sm_90 at robnet_free's
    most frequent shapes: no local-memory spills, at least 2 resident blocks of 4 warps per SM, and nearly all
    activation bytes loaded by 64/128-bit instructions (72 channels are not a multiple of 16: the kernels'
    alignment hint is what vectorises them)."""
    _require_static_analysis()
    from robnets.acceleration.sepconv_bench import SepHalfShape
    from robnets.acceleration.triton_sepconv import DEFAULT_BACKWARD_CONFIG, DEFAULT_FORWARD_CONFIG, KernelConfig
    from robnets.acceleration.triton_static import compile_launch, record_sep_half_launches, resources

    shape = SepHalfShape(n=256, c=channels, c_out=channels, h=size, w=size, stride=1, relu=True)
    fused = record_sep_half_launches(shape, dtype, DEFAULT_FORWARD_CONFIG, DEFAULT_BACKWARD_CONFIG)
    split_config = KernelConfig(block_p=32, split=True)
    split = record_sep_half_launches(shape, dtype, split_config, split_config) if dtype == torch.bfloat16 else []
    for direction, launch in fused + split:
        res = resources(compile_launch(launch), direction)
        where = f"{res.kernel} ({direction}, {dtype}, C={channels}): {res}"
        assert res.registers <= 255 and not res.spills, where
        assert res.blocks_per_sm * res.num_warps >= 8, where
        assert _wide_load_share(res.global_loads) >= 0.85, where


def test_benchmark_cli_compiles_and_reports(tmp_path):
    """benchmarks/triton_static.py end to end on one shape and the default forward tiling, and a bad argument
    refused in one line."""
    _require_static_analysis()
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "triton_static.py"
    out = tmp_path / "static.json"
    # the default forward tiling in fp32 at 144 channels: compiled above already (Triton's cache)
    run = subprocess.run([sys.executable, str(script), "--configs", "default", "--shapes", "1",
                          "--directions", "forward", "--dtype", "fp32", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=root)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["kernel"] == "_sep_half_fwd" and rows[0]["direction"] == "forward"
    assert rows[0]["shape"] == "144->144 8x8/1 relu" and rows[0]["count"] == 69  # robnet_free's most frequent
    assert 0 < rows[0]["registers"] <= 255 and rows[0]["occupancy"] > 0
    assert "| 144->144 8x8/1 relu | p64-ci16-co64-w4-s2 | _sep_half_fwd (forward) |" in \
        out.with_suffix(".md").read_text()
    for args, flag in ((["--directions", "sideways"], "--directions"), (["--model", "robnet_nope"], "--model")):
        bad = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                             cwd=root)
        assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [bad.stderr.strip().splitlines()[-1]]
        assert bad.stderr.strip().startswith(f"error: {flag}"), bad.stderr
