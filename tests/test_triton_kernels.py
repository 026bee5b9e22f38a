"""The fused Triton separable-conv half (``triton_sep_half``) against the PyTorch reference (``torch_sep_half``).

Without a GPU the kernels run under Triton's CPU interpreter. ``TRITON_INTERPRET=1`` must be set before triton is
imported, so every interpreter check runs once, in one subprocess that executes this file as a script
(``python tests/test_triton_kernels.py --interpret``); the tests below read its per-case results. The shapes are
tiny because the interpreter is slow. A CUDA test compares the compiled kernels on a real GPU when one exists.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from robnets.acceleration.fast_robnet import torch_sep_half
from robnets.acceleration.folding import FoldedConv

_HAS_TRITON = importlib.util.find_spec("triton") is not None
_NO_TRITON = "triton is not installed (the fused kernels are optional)"
_RESULT_MARK = "TRITON-CHECK-RESULTS "

FP32_TOL = 1e-4  # max |triton - reference| / max |reference|, for outputs and input gradients
BF16_TOL = 2e-2  # a couple of bf16 ulps: the kernel and PyTorch round intermediates at different places


def _case_id(c, stride, size, relu, layout):
    return f"C{c}-s{stride}-{size}x{size}-{'relu' if relu else 'norelu'}-{layout}"


GRID_CASES = {
    _case_id(c, stride, size, relu, layout): dict(c=c, stride=stride, hw=(size, size), relu=relu, layout=layout)
    for c in (8, 12)  # 12: channel blocks padded to 16 and masked
    for stride, size in ((1, 8), (2, 7), (2, 8))  # 7x7 with stride 2: odd size, last output row/col half-padded
    for relu in (True, False)
    for layout in ("channels_last", "nchw")
}
EXTRA_CASES = {
    # second half of a SepConv: C_in != C_out
    "cin12-cout8-s2-7x7": dict(c=12, c_out=8, stride=2, hw=(7, 7), relu=True, layout="channels_last"),
    # several input-channel chunks and output-channel programs (blocks of 64, 72 = 64 + 8 masked)
    "C72-s1-5x5-relu": dict(c=72, stride=1, hw=(5, 5), relu=True, layout="channels_last", n=1),
    "C72-s2-5x5-norelu-cout40": dict(c=72, c_out=40, stride=2, hw=(5, 5), relu=False, layout="nchw", n=1),
    # non-square input, and strided views that are neither NCHW- nor NHWC-contiguous
    "C8-s2-6x9-relu": dict(c=8, stride=2, hw=(6, 9), relu=True, layout="channels_last"),
    "C8-s1-transposed-view": dict(c=8, stride=1, hw=(7, 8), relu=True, layout="transposed"),
    "C12-s2-channel-slice-view": dict(c=12, stride=2, hw=(7, 7), relu=False, layout="sliced"),
    # pointwise variants: affine BN, conv bias without BN, neither (no bias at all)
    "affine-bn": dict(c=12, stride=1, hw=(6, 6), relu=True, layout="channels_last", bn="affine"),
    "conv-bias-no-bn": dict(c=8, stride=2, hw=(7, 7), relu=True, layout="nchw", bn=None, conv_bias=True),
    "no-bias": dict(c=8, stride=1, hw=(6, 6), relu=False, layout="channels_last", bn=None),
    # other tile sizes and launch settings (benchmarks/sepconv_kernels.py sweeps them): one forward program
    # covering all 72 output channels with 16-pixel tiles, 32-channel chunks; a backward with 16-channel programs
    # and 32-channel reduction chunks, pipelined
    "C72-s2-5x5-relu-configs": dict(c=72, stride=2, hw=(5, 5), relu=True, layout="channels_last", n=1,
                                    configs=(dict(block_p=16, block_ci=32, block_co=128, num_warps=2),
                                             dict(block_p=32, block_ci=16, block_co=32, num_stages=2))),
    # split: Triton depthwise kernels (ReLU / ReLU mask fused) and the 1x1 product as a GEMM
    "split-C12-s2-7x7-relu-nchw-cout8": dict(c=12, c_out=8, stride=2, hw=(7, 7), relu=True, layout="nchw",
                                             configs=(dict(split=True), dict(split=True))),
    "split-C72-s1-5x5-relu-no-bias": dict(c=72, stride=1, hw=(5, 5), relu=True, layout="channels_last", n=1,
                                          bn=None, configs=(dict(block_ci=32, split=True),
                                                            dict(block_p=32, block_ci=16, split=True))),
    "split-bf16-C8-s2-8x8-norelu": dict(c=8, stride=2, hw=(8, 8), relu=False, layout="channels_last",
                                        dtype="bfloat16", configs=(dict(split=True), dict(split=True))),
    "split-fwd-only-C12-s1-6x6-relu-sliced": dict(c=12, stride=1, hw=(6, 6), relu=True, layout="sliced",
                                                  configs=(dict(split=True), dict())),
    # channels-last output gradients (as in the engine): 72 channels give the alignment hint 8, 12 give 4
    "C72-s1-5x5-relu-grad-cl": dict(c=72, stride=1, hw=(5, 5), relu=True, layout="channels_last", n=1,
                                    grad_channels_last=True),
    "split-C12-s2-7x7-relu-grad-cl": dict(c=12, stride=2, hw=(7, 7), relu=True, layout="channels_last",
                                          grad_channels_last=True, configs=(dict(split=True), dict(split=True))),
    # bfloat16: fp32 accumulation, bf16 output and gradient
    "bf16-C12-s2-7x7-relu": dict(c=12, stride=2, hw=(7, 7), relu=True, layout="channels_last", dtype="bfloat16"),
    "bf16-C8-s1-8x8-norelu": dict(c=8, stride=1, hw=(8, 8), relu=False, layout="nchw", dtype="bfloat16"),
}
ALL_CASES = {**GRID_CASES, **EXTRA_CASES}


# --------------------------------------------------------------------------------------------- shared helpers

def _make_half(c, c_out=None, stride=1, bn="plain", conv_bias=False, seed=0, device="cpu", dtype=torch.float32):
    """A depthwise 3x3 conv and a FoldedConv (1x1 conv + BatchNorm with random running statistics)."""
    torch.manual_seed(seed)
    c_out = c if c_out is None else c_out
    depthwise = nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c, bias=False)
    conv = nn.Conv2d(c, c_out, 1, bias=conv_bias)
    norm = None
    if bn is not None:
        norm = nn.BatchNorm2d(c_out, affine=bn == "affine")
        with torch.no_grad():
            norm.running_mean.normal_(0.0, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            if norm.weight is not None:
                norm.weight.normal_(1.0, 0.3)
                norm.bias.normal_(0.0, 0.3)
        norm.eval()
    modules = [m for m in (depthwise, conv, norm) if m is not None]
    for m in modules:
        m.to(device=device, dtype=dtype)
    return depthwise, FoldedConv(conv, norm)


def _make_input(n, c, hw, layout, device="cpu", dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    if layout == "transposed":  # an (n, c, h, w) view of an (n, c, w, h) tensor: H and W strides swapped
        x = torch.randn(n, c, w, h, generator=g).transpose(2, 3)
    elif layout == "sliced":  # every other channel of a channels-last tensor with 2c channels
        x = torch.randn(n, 2 * c, h, w, generator=g).contiguous(memory_format=torch.channels_last)[:, ::2]
    else:
        x = torch.randn(n, c, h, w, generator=g)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device=device, dtype=dtype)


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _compare(x, depthwise, pointwise, relu, half, seed=2, grad_channels_last=False):
    """Relative errors of the output and of the gradient of a random weighted sum w.r.t. the input (the output
    gradient NCHW, or channels-last as the engine passes it: then the kernels' alignment hint exceeds 1)."""
    x = x.detach().requires_grad_(True)
    out = half(x, depthwise, pointwise, relu)
    ref = torch_sep_half(x, depthwise, pointwise, relu)
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed)).to(ref.device, torch.float32)
    if grad_channels_last:
        weights = weights.contiguous(memory_format=torch.channels_last)
    (grad,) = torch.autograd.grad((out.float() * weights).sum(), x)
    (grad_ref,) = torch.autograd.grad((ref.float() * weights).sum(), x)
    return {
        "shape_ok": tuple(out.shape) == tuple(ref.shape),
        "dtype_ok": out.dtype == ref.dtype and grad.dtype == x.dtype,
        "channels_last": out.is_contiguous(memory_format=torch.channels_last),
        "out_err": _rel(out, ref),
        "grad_err": _rel(grad, grad_ref),
    }


# ---------------------------------------------------------------------- the interpreter side (the subprocess)

def _run_case(spec):
    from robnets.acceleration.triton_sepconv import triton_sep_half

    dtype = getattr(torch, spec.get("dtype", "float32"))
    depthwise, pointwise = _make_half(spec["c"], spec.get("c_out"), spec["stride"], spec.get("bn", "plain"),
                                      spec.get("conv_bias", False), dtype=dtype)
    x = _make_input(spec.get("n", 2), spec["c"], spec["hw"], spec["layout"], dtype=dtype)
    half = triton_sep_half
    if "configs" in spec:
        from functools import partial

        from robnets.acceleration.triton_sepconv import KernelConfig

        forward, backward = (KernelConfig(**c) for c in spec["configs"])
        half = partial(triton_sep_half, forward_config=forward, backward_config=backward)
    return _compare(x, depthwise, pointwise, spec["relu"], half,
                    grad_channels_last=spec.get("grad_channels_last", False))


def _run_fast_robnet():
    """A tiny real RobNet end to end: FastRobNet with Triton kernels against FastRobNet with PyTorch ops."""
    import robnets
    from robnets.acceleration import FastRobNet

    torch.manual_seed(0)
    genotype = "_".join(str(robnets.models.ROBNET_FREE).split("_")[:3])
    model = robnets.create_model("robnet", genotype=genotype, C=4, layers=3).eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    x = torch.rand(1, 3, 8, 8, generator=g)
    y = torch.tensor([1])
    # one interpreted forward/backward, compared with the PyTorch kernels in fp32 and, at the same ReLU pattern
    # (the kernels report the ReLU they apply inside), with float64
    import copy

    from robnets.acceleration.numerics import logits_and_input_grad, compare_with_float64

    agreement = compare_with_float64(FastRobNet(model, kernels="triton"), FastRobNet(copy.deepcopy(model).double()),
                                     x, y)
    ref_logits, ref_grad = logits_and_input_grad(FastRobNet(model, kernels="torch"), x, y)
    return {"shape_ok": agreement.logits.shape == ref_logits.shape, "dtype_ok": True, "channels_last": True,
            "out_err": _rel(agreement.logits, ref_logits), "grad_err": _rel(agreement.grad, ref_grad),
            "float64": agreement.as_dict()}


def _run_fast_robnet_split():
    """FastRobNet with the split kernels chosen through ROBNETS_TRITON_CONFIG, against PyTorch's kernels."""
    import robnets
    from robnets.acceleration import FastRobNet
    from robnets.acceleration.numerics import logits_and_input_grad

    torch.manual_seed(0)
    genotype = "_".join(str(robnets.models.ROBNET_FREE).split("_")[:3])
    model = robnets.create_model("robnet", genotype=genotype, C=4, layers=3).eval()
    x, y = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([3])
    os.environ["ROBNETS_TRITON_CONFIG"] = "p32-ci16-co64-w4-s1-split"
    try:
        engine = FastRobNet(model, kernels="triton")
    finally:
        del os.environ["ROBNETS_TRITON_CONFIG"]
    logits, grad = logits_and_input_grad(engine, x, y)
    ref_logits, ref_grad = logits_and_input_grad(FastRobNet(model, kernels="torch"), x, y)
    return {"shape_ok": logits.shape == ref_logits.shape, "dtype_ok": True, "channels_last": True,
            "out_err": _rel(logits, ref_logits), "grad_err": _rel(grad, ref_grad),
            "split": engine._half.keywords["forward_config"].split}


def _run_fast_robnet_compiled():
    """FastRobNet with the Triton kernels through torch.compile (aot_eager: Dynamo and AOTAutograd capture one
    graph, the kernels run as opaque robnets:: operators) against the engine with PyTorch's kernels. (Against
    the eager Triton engine the results were bitwise equal; that second interpreted run is left out for time.)"""
    import robnets
    import robnets.acceleration.triton_sepconv as kernels_module
    from robnets.acceleration import FastRobNet
    from robnets.acceleration.numerics import logits_and_input_grad

    torch.manual_seed(0)
    genotype = "_".join(str(robnets.models.ROBNET_FREE).split("_")[:3])
    model = robnets.create_model("robnet", genotype=genotype, C=4, layers=3).eval()
    x, y = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([5])
    compiled = FastRobNet(model, kernels="triton", compile="aot_eager")
    ref_logits, ref_grad = logits_and_input_grad(FastRobNet(model, kernels="torch"), x, y)
    calls = {"forward": 0, "input_grad": 0}
    forward, input_grad = kernels_module._forward, kernels_module._input_grad

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    kernels_module._forward = counting("forward", forward)
    kernels_module._input_grad = counting("input_grad", input_grad)
    try:
        logits, grad = logits_and_input_grad(compiled, x, y)  # fullgraph=True: a graph break would raise
    finally:
        kernels_module._forward, kernels_module._input_grad = forward, input_grad
    return {"shape_ok": logits.shape == ref_logits.shape, "dtype_ok": True, "channels_last": True,
            "out_err": _rel(logits, ref_logits), "grad_err": _rel(grad, ref_grad), "calls": calls,
            "halves": sum(2 for m in model.modules() if type(m).__name__ == "SepConv")}


def _run_tuned():
    """The per-shape tuner (robnets.acceleration.tuning) on a tiny RobNet: a timer that makes each direction's
    winner depend on the shape, so Triton forwards run beside PyTorch backwards and the reverse; the tuned engine
    against PyTorch's kernels, eager and compiled (the compiled one reads the choices made eagerly, timing
    nothing); and one real (wall-clock) tuning of a tiny half, every candidate run."""
    import robnets
    from robnets.acceleration import FastRobNet
    from robnets.acceleration.folding import randomize_batchnorm
    from robnets.acceleration.numerics import logits_and_input_grad
    from robnets.acceleration.tuning import SepHalfTuner

    torch.manual_seed(0)
    genotype = "_".join(str(robnets.models.ROBNET_FREE).split("_")[:3])
    model = randomize_batchnorm(robnets.create_model("robnet", genotype=genotype, C=4, layers=3).eval())
    forward, backward = ("torch", "p64-ci16-co64-w4-s2"), ("torch", "p32-ci16-co32-w4-s1-split")
    timed = []

    def timer(candidate, device):  # noqa: ARG001
        args = candidate.call.args  # (x, ..., relu, cfg) forward; (grad_out, x, ..., relu, cfg) backward
        timed.append(candidate.label)
        triton_wins = args[0].shape[1] >= 8 if candidate.direction == "forward" else args[7]
        return 1e-6 * (1.0 if (candidate.label != "torch") == triton_wins else 2.0)

    tuner = SepHalfTuner(forward_candidates=forward, backward_candidates=backward, timer=timer)
    eager = FastRobNet(model)
    eager._half = tuner
    x, y = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)), torch.tensor([2, 7])
    ref_logits, ref_grad = logits_and_input_grad(FastRobNet(model), x, y)
    logits, grad = logits_and_input_grad(eager, x, y)
    mixes = sorted({f"{c.forward == 'torch'}-{c.backward == 'torch'}" for c in tuner._choices.values()})
    timed_eagerly = len(timed)
    compiled = FastRobNet(model, kernels="torch", compile="eager")
    compiled._half = tuner
    compiled.kernels = "tuned"  # as FastRobNet(kernels='tuned') with this tuner: tunes eagerly, then compiles
    compiled_logits, compiled_grad = logits_and_input_grad(compiled, x, y)

    real = SepHalfTuner(forward_candidates=forward, backward_candidates=backward)  # the wall-clock timer
    depthwise, pointwise = _make_half(8)
    choice = real.tune(_make_input(1, 8, (4, 4), "channels_last"), depthwise, pointwise, True)
    return {"shape_ok": logits.shape == ref_logits.shape, "dtype_ok": True, "channels_last": True,
            "out_err": _rel(logits, ref_logits), "grad_err": _rel(grad, ref_grad), "mixes": mixes,
            "compiled_out_err": _rel(compiled_logits, logits), "compiled_grad_err": _rel(compiled_grad, grad),
            "timed_while_compiling": len(timed) - timed_eagerly,
            "wall_clock_timed": sorted(choice.forward_us) + sorted(choice.backward_us)}


def _run_misc():
    """Argument validation and the no-grad path."""
    from robnets.acceleration.triton_sepconv import triton_available, triton_sep_half

    depthwise, pointwise = _make_half(8)
    x = _make_input(1, 8, (4, 4), "channels_last")
    checks = {"available": triton_available()}
    with torch.no_grad():
        checks["no_grad"] = _rel(triton_sep_half(x, depthwise, pointwise, True),
                                 torch_sep_half(x, depthwise, pointwise, True)) < FP32_TOL
    # the gradient of a sum arrives expanded (all strides 0); 12 output channels are not a multiple of 8
    depthwise12, pointwise12 = _make_half(8, 12)
    xg = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(triton_sep_half(xg, depthwise12, pointwise12, True).sum(), xg)
    (grad_ref,) = torch.autograd.grad(torch_sep_half(xg, depthwise12, pointwise12, True).sum(), xg)
    checks["expanded_grad"] = _rel(grad, grad_ref) < FP32_TOL
    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
    try:
        triton_sep_half(x, grouped, pointwise, True)
        checks["rejects_grouped"] = False
    except ValueError:
        checks["rejects_grouped"] = True
    return checks


def _interpreter_main():
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    torch.set_num_threads(1)  # runs beside the rest of the suite (interpretation is single-threaded anyway)
    results = {"cases": {}, "errors": {}}
    for name, spec in ALL_CASES.items():
        try:
            results["cases"][name] = _run_case(spec)
        except Exception as exc:  # noqa: BLE001 - reported per case by the tests
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
    for name, fn in (("fast_robnet", _run_fast_robnet), ("fast_robnet_split", _run_fast_robnet_split),
                     ("fast_robnet_compiled", _run_fast_robnet_compiled), ("tuned", _run_tuned),
                     ("misc", _run_misc)):
        try:
            results[name] = fn()
        except Exception as exc:  # noqa: BLE001
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
    print(_RESULT_MARK + json.dumps(results))


# ----------------------------------------------------------------------------------------- the pytest side

_BACKGROUND: subprocess.Popen | None = None


def start_interpreter_run() -> None:
    """Start the interpreter subprocess (one thread) without waiting: conftest calls this when the collected
    tests need it, so its ~20 s of single-core interpretation overlap the rest of the suite."""
    global _BACKGROUND
    if _BACKGROUND is not None or not _HAS_TRITON:
        return
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    _BACKGROUND = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--interpret"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    atexit.register(lambda proc=_BACKGROUND: proc.poll() is None and proc.kill())


def interpreter_running() -> bool:
    """True while the background interpreter subprocess is still working (conftest lends it a core)."""
    return _BACKGROUND is not None and _BACKGROUND.poll() is None


@pytest.fixture(scope="module")
def interpreted():
    if not _HAS_TRITON:
        pytest.skip(_NO_TRITON)
    start_interpreter_run()
    try:
        stdout, stderr = _BACKGROUND.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        _BACKGROUND.kill()
        pytest.fail("the Triton interpreter run took more than 600 s")
    lines = [line for line in stdout.splitlines() if line.startswith(_RESULT_MARK)]
    if _BACKGROUND.returncode != 0 or not lines:
        pytest.fail(f"interpreter run failed (rc={_BACKGROUND.returncode}):\n{stdout[-4000:]}\n{stderr[-4000:]}")
    return json.loads(lines[-1][len(_RESULT_MARK):])


def _check(result, tol):
    assert result["shape_ok"] and result["dtype_ok"]
    assert result["channels_last"]
    assert result["out_err"] < tol, f"output relative error {result['out_err']:.3g}"
    assert result["grad_err"] < tol, f"input-gradient relative error {result['grad_err']:.3g}"


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_interpreted_kernels_match_torch_sep_half(interpreted, name):
    assert name not in interpreted["errors"], interpreted["errors"].get(name)
    tol = BF16_TOL if ALL_CASES[name].get("dtype") == "bfloat16" else FP32_TOL
    _check(interpreted["cases"][name], tol)


def test_interpreted_fast_robnet_with_split_kernels_from_the_environment(interpreted):
    assert "fast_robnet_split" not in interpreted["errors"], interpreted["errors"].get("fast_robnet_split")
    assert interpreted["fast_robnet_split"]["split"]
    _check(interpreted["fast_robnet_split"], FP32_TOL)


def test_interpreted_fast_robnet_with_triton_kernels_compiles_as_one_graph(interpreted):
    """torch.compile of the Triton engine: every separable-conv half runs the kernels (as robnets:: operators)
    inside the captured graph, forward and input gradient, with the numbers of PyTorch's kernels."""
    assert "fast_robnet_compiled" not in interpreted["errors"], interpreted["errors"].get("fast_robnet_compiled")
    result = interpreted["fast_robnet_compiled"]
    assert result["halves"] > 0
    assert result["calls"] == {"forward": result["halves"], "input_grad": result["halves"]}, result
    _check(result, FP32_TOL)


def test_interpreted_fast_robnet_with_triton_kernels_matches_torch_kernels(interpreted):
    assert "fast_robnet" not in interpreted["errors"], interpreted["errors"].get("fast_robnet")
    _check(interpreted["fast_robnet"], FP32_TOL)
    agreement = interpreted["fast_robnet"]["float64"]
    assert agreement["relu_units"] > 0 and agreement["flipped_units"] == 0, agreement
    assert agreement["logits_rel"] < FP32_TOL and agreement["grad_rel_same_pattern"] < FP32_TOL, agreement


def test_interpreted_tuned_engine_mixes_triton_and_pytorch_directions_with_the_same_numbers(interpreted):
    assert "tuned" not in interpreted["errors"], interpreted["errors"].get("tuned")
    result = interpreted["tuned"]
    # every combination of a Triton / PyTorch forward with a Triton / PyTorch backward was chosen somewhere
    assert result["mixes"] == ["False-False", "False-True", "True-False", "True-True"], result["mixes"]
    _check(result, FP32_TOL)
    assert result["compiled_out_err"] < FP32_TOL and result["compiled_grad_err"] < FP32_TOL, result
    assert result["timed_while_compiling"] == 0
    assert result["wall_clock_timed"] == ["p64-ci16-co64-w4-s2", "torch", "p32-ci16-co32-w4-s1-split", "torch"]


def test_interpreted_validation_and_no_grad(interpreted):
    assert "misc" not in interpreted["errors"], interpreted["errors"].get("misc")
    assert interpreted["misc"] == {"available": True, "no_grad": True, "expanded_grad": True, "rejects_grouped": True}


def test_module_imports_without_triton(monkeypatch):
    """Importing never fails without Triton; only calling the kernel does, with a clear message."""
    import robnets.acceleration.triton_sepconv as installed

    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    name = "robnets.acceleration._triton_sepconv_without_triton"
    spec = importlib.util.spec_from_file_location(name, installed.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    assert module.triton is None and not module.triton_available()
    depthwise, pointwise = _make_half(8)
    with pytest.raises(RuntimeError, match="needs Triton"):
        module.triton_sep_half(torch.randn(1, 8, 4, 4), depthwise, pointwise, True)


def test_kernel_configs_are_validated():
    """Launch settings fail at construction with the field's name, not inside Triton's compiler."""
    from robnets.acceleration.triton_sepconv import DEFAULT_BACKWARD_CONFIG, DEFAULT_FORWARD_CONFIG, KernelConfig

    assert DEFAULT_FORWARD_CONFIG.label() == "p64-ci16-co64-w4-s2"
    assert DEFAULT_BACKWARD_CONFIG.label() == "p32-ci64-co32-w4-s1"
    assert KernelConfig(block_p=32, split=True).label() == "p32-ci64-co64-w4-s1-split"
    for bad in (dict(block_p=48), dict(block_ci=8), dict(block_co=0), dict(num_warps=3), dict(num_stages=0)):
        with pytest.raises(ValueError, match=f"KernelConfig.{next(iter(bad))}"):
            KernelConfig(**bad)
    # labels name configurations both ways (benchmarks/sepconv_kernels.py --configs)
    from robnets.acceleration.sepconv_bench import SWEEP_LABELS, kernel_configs

    sweep = kernel_configs("sweep")
    assert [c.label() for c in sweep] == list(SWEEP_LABELS) and len(set(sweep)) == len(sweep)
    assert any(c.split for c in sweep) and kernel_configs("default") == [DEFAULT_FORWARD_CONFIG,
                                                                          DEFAULT_BACKWARD_CONFIG]
    assert DEFAULT_FORWARD_CONFIG.label() in SWEEP_LABELS and DEFAULT_BACKWARD_CONFIG.label() in SWEEP_LABELS
    assert KernelConfig.from_label("p32-ci16-co64-w2-s2-split") == KernelConfig(32, 16, 64, 2, 2, split=True)
    for bad in ("p64-ci64-co64-w4", "p48-ci64-co64-w4-s1"):
        with pytest.raises(ValueError, match="label like|KernelConfig.block_p"):
            KernelConfig.from_label(bad)


@pytest.mark.skipif(not _HAS_TRITON, reason=_NO_TRITON)
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="this process runs the interpreter")
def test_cpu_tensor_without_interpreter_is_refused():
    from robnets.acceleration.triton_sepconv import triton_sep_half

    depthwise, pointwise = _make_half(8)
    with pytest.raises(RuntimeError, match="CUDA"):
        triton_sep_half(torch.randn(1, 8, 4, 4), depthwise, pointwise, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not _HAS_TRITON, reason=_NO_TRITON)
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="checks the compiled kernels, not the interpreter")
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("split", [False, True])
def test_cuda_kernels_match_torch_sep_half(stride, relu, split):
    from functools import partial

    from robnets.acceleration.triton_sepconv import DEFAULT_BACKWARD_CONFIG, DEFAULT_FORWARD_CONFIG, KernelConfig
    from robnets.acceleration.triton_sepconv import triton_sep_half as fused

    # the default tilings (fused), or split kernels; 36 channels: the alignment hint is 4 in channels-last, 1 in NCHW
    forward, backward = ((KernelConfig(block_p=32, split=True),) * 2 if split
                         else (DEFAULT_FORWARD_CONFIG, DEFAULT_BACKWARD_CONFIG))
    triton_sep_half = partial(fused, forward_config=forward, backward_config=backward)

    depthwise, pointwise = _make_half(36, stride=stride, device="cuda")
    x = _make_input(4, 36, (32, 32), "channels_last", device="cuda")
    cudnn_tf32, matmul_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        # Exact fp32 on both sides (the kernel follows cudnn.allow_tf32, as the reference F.conv2d does).
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        _check(_compare(x, depthwise, pointwise, relu, triton_sep_half), FP32_TOL)
        _check(_compare(x.contiguous(), depthwise, pointwise, relu, triton_sep_half), FP32_TOL)
        _check(_compare(x, depthwise, pointwise, relu, triton_sep_half, grad_channels_last=True), FP32_TOL)
        # TF32 on both sides: 10-bit mantissas, so a looser bound.
        torch.backends.cudnn.allow_tf32 = True
        _check(_compare(x, depthwise, pointwise, relu, triton_sep_half), 1e-2)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, matmul_tf32
    depthwise_bf16, pointwise_bf16 = _make_half(36, stride=stride, device="cuda", dtype=torch.bfloat16)
    _check(_compare(x.bfloat16(), depthwise_bf16, pointwise_bf16, relu, triton_sep_half), BF16_TOL)
    _check(_compare(x.bfloat16(), depthwise_bf16, pointwise_bf16, relu, triton_sep_half, grad_channels_last=True),
           BF16_TOL)


if __name__ == "__main__" and "--interpret" in sys.argv:
    _interpreter_main()
