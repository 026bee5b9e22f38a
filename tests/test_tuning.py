"""The per-shape kernel tuner (robnets.acceleration.tuning): choices follow the measured times direction by
direction, persist atomically per GPU and library versions, and the tuned engine computes the same function.
Triton kernels themselves run in tests/test_triton_kernels.py (interpreter) and on CUDA; here the timers are
fakes that return chosen times without running the Triton candidates."""

from __future__ import annotations

import json

import pytest
import torch

import robnets
from robnets.acceleration import FastRobNet, accelerate
from robnets.acceleration.folding import randomize_batchnorm
from robnets.acceleration.numerics import logits_and_input_grad
from robnets.acceleration.sepconv_bench import SWEEP_LABELS, SepHalfShape, make_half
from robnets.acceleration.tuning import (MARGIN, SepHalfTuner, _pick, candidates_from_environment,
                                         default_cache_path)

FORWARD = ("torch", "p64-ci16-co64-w4-s2", "p32-ci16-co128-w4-s2")
BACKWARD = ("torch", "p32-ci64-co32-w4-s1", "p64-ci64-co64-w8-s1-split")


def _fake_timer(times, calls=None, fail=()):
    """A timer returning ``times[direction][label]`` microseconds; runs only PyTorch's candidate (CPU)."""

    def timer(candidate, device):  # noqa: ARG001
        if calls is not None:
            calls.append((candidate.direction, candidate.label))
        if candidate.label in fail:
            raise RuntimeError("out of shared memory")
        if candidate.label == "torch":
            candidate()  # PyTorch's direction functions run anywhere: they must work on the tuner's inputs
        return times[candidate.direction][candidate.label] * 1e-6

    return timer


TIMES = {"forward": {"torch": 10.0, "p64-ci16-co64-w4-s2": 6.0, "p32-ci16-co128-w4-s2": 7.0},
         "backward": {"torch": 10.0, "p32-ci64-co32-w4-s1": 9.7, "p64-ci64-co64-w8-s1-split": 12.0}}


def _half(c=8, c_out=8, hw=8, stride=1, relu=True, n=2):
    return make_half(SepHalfShape(n, c, c_out, hw, hw, stride, relu), torch.device("cpu"), torch.float32), relu


def test_a_triton_candidate_must_beat_pytorch_by_the_margin():
    assert MARGIN == pytest.approx(0.05)
    assert _pick({"torch": 10.0, "a": 9.6}) == "torch"  # 4 % faster: noise, PyTorch's kernels stay
    assert _pick({"torch": 10.0, "a": 9.4, "b": 9.0}) == "b"
    assert _pick({"torch": 10.0, "a": 12.0}) == "torch"
    assert _pick({}) == "torch"  # every candidate failed
    assert _pick({"a": 3.0, "b": 2.0}) == "b"  # PyTorch's kernels failed to time (never in practice)


def test_choices_follow_the_measured_times_per_direction_and_skip_failing_candidates():
    calls = []
    tuner = SepHalfTuner(forward_candidates=FORWARD, backward_candidates=BACKWARD,
                         timer=_fake_timer(TIMES, calls, fail=("p32-ci16-co128-w4-s2",)))
    (x, depthwise, pointwise), relu = _half()
    choice = tuner.tune(x, depthwise, pointwise, relu)
    assert (choice.forward, choice.backward) == ("p64-ci16-co64-w4-s2", "torch")  # 9.7 vs 10: within the margin
    assert choice.forward_us == {"torch": 10.0, "p64-ci16-co64-w4-s2": 6.0}  # the failing tiling left out
    assert choice.backward_us == TIMES["backward"]
    assert calls == [("forward", label) for label in FORWARD] + [("backward", label) for label in BACKWARD]
    # the same shape is not timed again; another shape (stride, channels, dtype, layout) is
    assert tuner.tune(x, depthwise, pointwise, relu) is choice and len(calls) == 6
    assert tuner.choice(x, depthwise, pointwise, relu) is choice
    (x2, dw2, pw2), _ = _half(stride=2)
    tuner.tune(x2, dw2, pw2, relu)
    tuner.tune(x.contiguous(), depthwise, pointwise, relu)  # NCHW strides: another key
    assert len(calls) == 18 and len(tuner._choices) == 3
    table = tuner.table()
    assert "p64-ci16-co64-w4-s2 | 6.0 (10.0)" in table and table.count("\n") == 4


def test_tuned_engine_with_pytorch_choices_is_the_pytorch_engine():
    """Where PyTorch's kernels win both directions the tuner calls them exactly as the default engine does."""
    torch.manual_seed(0)
    model = randomize_batchnorm(robnets.create_model("robnet_large_v1", C=4, layers=3)).eval()
    slow = {d: {label: 20.0 for label in labels} | {"torch": 1.0}
            for d, labels in (("forward", FORWARD), ("backward", BACKWARD))}
    calls = []
    tuner = SepHalfTuner(forward_candidates=FORWARD, backward_candidates=BACKWARD, timer=_fake_timer(slow, calls))
    tuned = FastRobNet(model)
    tuned._half = tuner
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([1, 2])
    logits, grad = logits_and_input_grad(tuned, x, y)
    ref_logits, ref_grad = logits_and_input_grad(FastRobNet(model), x, y)
    assert torch.equal(logits, ref_logits) and torch.equal(grad, ref_grad)
    assert tuner._choices and all((c.forward, c.backward) == ("torch", "torch") for c in tuner._choices.values())
    timed = len(calls)
    logits_and_input_grad(tuned, x, y)
    assert len(calls) == timed  # tuned once per shape


def test_choices_persist_atomically_per_device_and_versions(tmp_path):
    cache = tmp_path / "tuning" / "sepconv.json"
    first = SepHalfTuner(forward_candidates=FORWARD, backward_candidates=BACKWARD, timer=_fake_timer(TIMES),
                         cache_path=cache)
    first.persist_device_types = ("cpu",)  # on CUDA only by default; the logic is the same
    halves = [_half(), _half(c=16, c_out=16, hw=4, relu=False)]
    made = [first.tune(x, dw, pw, relu) for (x, dw, pw), relu in halves]
    data = json.loads(cache.read_text())
    assert data["version"] == 1 and len(data["devices"]) == 1
    (signature, entries), = data["devices"].items()
    assert signature.startswith("cpu | torch ") and "triton" in signature and len(entries) == 2
    assert [p.name for p in cache.parent.iterdir()] == ["sepconv.json"]  # no temporary file left behind

    def never(candidate, device):  # noqa: ARG001
        raise AssertionError("a persisted choice was timed again")

    second = SepHalfTuner(forward_candidates=FORWARD, backward_candidates=BACKWARD, timer=never, cache_path=cache)
    second.persist_device_types = ("cpu",)
    for ((x, dw, pw), relu), choice in zip(halves, made):
        assert second.tune(x, dw, pw, relu) == choice

    # other versions or another GPU: a separate entry, not reused
    data["devices"] = {signature.replace("torch ", "torch 0.0-"): entries}
    cache.write_text(json.dumps(data))
    calls = []
    third = SepHalfTuner(forward_candidates=FORWARD, backward_candidates=BACKWARD, timer=_fake_timer(TIMES, calls),
                         cache_path=cache)
    third.persist_device_types = ("cpu",)
    (x, dw, pw), relu = halves[0]
    assert third.tune(x, dw, pw, relu) == made[0] and len(calls) == 6
    assert len(json.loads(cache.read_text())["devices"]) == 2  # both kept

    # a damaged file is ignored (re-tuned) and then replaced
    cache.write_text("{not json")
    fourth = SepHalfTuner(forward_candidates=FORWARD, backward_candidates=BACKWARD, timer=_fake_timer(TIMES),
                          cache_path=cache)
    fourth.persist_device_types = ("cpu",)
    assert fourth.tune(x, dw, pw, relu) == made[0]
    assert json.loads(cache.read_text())["version"] == 1


def test_cpu_choices_are_not_persisted_by_default(tmp_path):
    cache = tmp_path / "sepconv.json"
    tuner = SepHalfTuner(forward_candidates=FORWARD, backward_candidates=BACKWARD, timer=_fake_timer(TIMES),
                         cache_path=cache)
    (x, dw, pw), relu = _half()
    tuner.tune(x, dw, pw, relu)
    assert not cache.exists()


def test_candidates_and_cache_path_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("ROBNETS_TUNING_CANDIDATES", raising=False)
    forward, backward = candidates_from_environment()
    assert forward[0] == backward[0] == "torch" and len(forward) > 2 and len(backward) > 2
    monkeypatch.setenv("ROBNETS_TUNING_CANDIDATES", "sweep")
    forward, backward = candidates_from_environment()
    assert set(forward[1:]) | set(backward[1:]) == set(SWEEP_LABELS) and forward[0] == backward[0] == "torch"
    assert len(forward) == len(backward) == 11 and set(forward) & set(backward) == {"torch", *SWEEP_LABELS[12:]}
    monkeypatch.setenv("ROBNETS_TUNING_CANDIDATES", "p32-ci32-co32-w4-s1, torch")
    assert candidates_from_environment() == (("torch", "p32-ci32-co32-w4-s1"),) * 2
    monkeypatch.setenv("ROBNETS_TUNING_CANDIDATES", "p33-fast")
    with pytest.raises(robnets.RobnetsError, match="ROBNETS_TUNING_CANDIDATES: 'p33-fast' is not a kernel"):
        candidates_from_environment()
    with pytest.raises(ValueError, match="must include 'torch'"):
        SepHalfTuner(forward_candidates=("p64-ci16-co64-w4-s2",), backward_candidates=BACKWARD)

    monkeypatch.setenv("ROBNETS_TUNING_CACHE", "off")
    assert default_cache_path() is None
    monkeypatch.setenv("ROBNETS_TUNING_CACHE", str(tmp_path / "t.json"))
    assert default_cache_path() == tmp_path / "t.json"
    monkeypatch.setenv("ROBNETS_TUNING_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_path() == tmp_path / "robnets" / "sepconv-tuning.json"


def test_tuned_kernels_need_triton_and_a_gpu(monkeypatch):
    robnet = robnets.create_model("robnet_large_v1", C=4, layers=3)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("ROBNETS_FAST_KERNELS", "tuned")
    if not torch.cuda.is_available():
        with pytest.raises(robnets.RobnetsError, match="tuned Triton kernels were asked for but cannot run on cpu"):
            accelerate(robnet, "cpu")
    with pytest.raises(ValueError, match="'torch', 'triton' or 'tuned'"):
        FastRobNet(robnet, kernels="fastest")


def test_throughput_benchmark_refuses_tuned_kernels_without_a_gpu_in_one_line():
    import os
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("this machine can run the tuned kernels")
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ROBNETS_FAST_KERNELS")}
    env["PYTHONPATH"] = str(repo / "src")
    for args, extra_env in ((["--kernels", "tuned"], {}), ([], {"ROBNETS_FAST_KERNELS": "fastest"})):
        proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "throughput.py"), "--device", "cpu",
                               "--models", "robnet_free", "--batch-size", "1", "--workloads", "forward", *args],
                              capture_output=True, text=True, env={**env, **extra_env}, timeout=120)
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr, proc.stderr
        assert last.startswith("throughput.py: error:") and ("tuned" in last or "ROBNETS_FAST_KERNELS" in last), last


def test_the_pytorch_direction_reads_conv2d_weights_without_a_copy_per_call():
    """A direction that runs PyTorch's kernels takes the depthwise weight in conv2d's layout, kept by the
    engine's FoldedConv: converting the Triton layout back on every call added a kernel to each call and to
    PyTorch's timing in the tuner (a few us on a ~20 us half, beyond the 5 % margin)."""
    from robnets.acceleration.fast_robnet import torch_sep_half
    from robnets.acceleration.folding import FoldedConv
    from robnets.acceleration.traffic import _Recorder
    from robnets.acceleration.triton_sepconv import (DEFAULT_FORWARD_CONFIG, TORCH_KERNELS, _forward, _input_grad,
                                                     depthwise_weight, pointwise_weights)

    (x, depthwise, pointwise), relu = _half(c=8, c_out=6)
    folded = FoldedConv(depthwise, None)
    conv_layout = depthwise_weight(x, folded, TORCH_KERNELS)
    assert conv_layout.data_ptr() == depthwise.weight.data_ptr()  # fp32: the parameter itself
    tap_major = depthwise_weight(x, folded, DEFAULT_FORWARD_CONFIG)
    assert tap_major.shape == (3, 3, 8) and depthwise_weight(x, folded, DEFAULT_FORWARD_CONFIG) is tap_major
    bf16 = x.to(torch.bfloat16)
    assert depthwise_weight(bf16, folded, TORCH_KERNELS) is depthwise_weight(bf16, folded, TORCH_KERNELS)
    pw, bias = pointwise_weights(x, pointwise)
    grad_out = torch.ones(x.shape[0], 6, *x.shape[2:]).contiguous(memory_format=torch.channels_last)
    recorder = _Recorder()
    with recorder:
        out = _forward(x, conv_layout, pw, bias, 1, 1, 1, relu, TORCH_KERNELS)
        grad = _input_grad(grad_out, x, conv_layout, pw, 1, 1, 1, relu, TORCH_KERNELS)
    assert set(recorder.calls) == {"relu", "convolution", "convolution_backward", "threshold_backward"}, recorder.calls
    xg = x.detach().clone().requires_grad_(True)
    reference = torch_sep_half(xg, depthwise, pointwise, relu)
    (reference_grad,) = torch.autograd.grad(reference.sum(), [xg])
    assert torch.equal(out, reference) and torch.equal(grad, reference_grad)
