"""The measuring tools beside the benchmarks (benchmarks/measure): the float64 comparison of an execution path,
the memory-traffic counter and the plain-vs-fast throughput measurement."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import robnets
from benchmarks.measure.numerics import compare_with_float64
from robnets.acceleration import FastRobNet


def test_float64_comparison_refuses_a_different_execution_path():
    """The pattern is matched ReLU by ReLU: comparing the fast path with the plain one (different ReLUs) is
    refused with a clear message instead of comparing unrelated activations."""
    torch.manual_seed(0)
    model = robnets.create_model("robnet_large_v1", C=4, layers=3).eval()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    original_relu = F.relu
    with pytest.raises(RuntimeError, match="compare an execution path only with itself"):
        compare_with_float64(FastRobNet(model), copy.deepcopy(model).double(), x, y)
    assert F.relu is original_relu  # restored after the failure
    agreement = compare_with_float64(model, copy.deepcopy(model).double(), x, y)
    assert agreement.relu_units > 0 and set(agreement.as_dict()) == {
        "logits_rel", "grad_rel", "grad_rel_same_pattern", "flipped_units", "relu_units", "max_flip_margin"}


def test_attack_step_traffic_counts_the_bytes_of_a_separable_conv():
    """Depthwise 3x3 -> 1x1 -> flatten -> linear on a (2, 4, 6, 6) input: the convolution traffic and the part a
    fused separable conv saves (the depthwise output written and read back, and its gradient) by hand."""
    from benchmarks.measure.traffic import attack_step_traffic, pgd_bound_images_per_s

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
                                torch.nn.Conv2d(4, 8, 1, bias=False), torch.nn.Flatten(), torch.nn.Linear(288, 3))
    x, y = torch.rand(2, 4, 6, 6), torch.tensor([0, 2])
    f = 4  # bytes per fp32 value
    act_in, act_mid, act_out = 2 * 4 * 36 * f, 2 * 4 * 36 * f, 2 * 8 * 36 * f
    w_dw, w_pw = 4 * 9 * f, 8 * 4 * f
    forward_convs = (act_in + w_dw + act_mid) + (act_mid + w_pw + act_out)
    # backward, input gradients only: 1x1 reads grad_out, weight (and not its input) and writes grad_mid;
    # the depthwise reads grad_mid, weight and writes grad_in (the network input needs its gradient)
    backward_convs = (act_out + w_pw + act_mid) + (act_mid + w_dw + act_in)
    step = attack_step_traffic(model, x, y)
    assert step.calls["convolution"] == 2 and step.calls["convolution_backward"] == 2
    assert step.convolutions == forward_convs + backward_convs
    assert step.fused_separable == step.convolutions - 2 * act_mid - 2 * act_mid
    assert step.op_by_op > step.convolutions  # the linear layer, the loss and their backward move bytes too
    forward = attack_step_traffic(model, x, y, backward=False)
    assert forward.convolutions == forward_convs and "convolution_backward" not in forward.calls
    bound = pgd_bound_images_per_s(step, forward, 20, 1e12, "convolutions")
    assert bound == pytest.approx(1e12 / ((20 * step.convolutions + forward.convolutions) / 2))


def test_benchmark_runs_the_fast_path_at_its_own_batch_and_says_so():
    """The fast path needs about half the memory, so the benchmark can run it at a larger batch than the plain
    path (the largest batch that fits); rates are per image and the table names both batches."""
    from benchmarks.measure.throughput import measure_model, ratio_table

    rows = measure_model("preact_resnet18", torch.device("cpu"), 1, iters=1, warmup=0, workloads=("forward",),
                         fast_batch_size=3, log=lambda line: None)
    by_path = {m.path: m for m in rows}
    assert by_path["plain"].batch_size == 1 and by_path["fast"].batch_size == 3
    for m in rows:
        assert m.images_per_s == pytest.approx(m.batch_size / m.seconds_per_batch)
    assert "| preact_resnet18 | forward | 1 / 3 |" in ratio_table(rows)
    same = measure_model("preact_resnet18", torch.device("cpu"), 2, iters=1, warmup=0, workloads=("forward",),
                         log=lambda line: None)
    assert "| preact_resnet18 | forward | 2 |" in ratio_table(same)


def test_benchmark_leaves_out_a_workload_that_runs_out_of_memory(monkeypatch):
    from benchmarks.measure import throughput as benchmark

    real_time = benchmark._time

    def running_out_on_pgd(fn, device, iters, warmup):
        if getattr(fn, "__name__", "") == "pgd_eval":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_time(fn, device, iters, warmup)

    monkeypatch.setattr(benchmark, "_time", running_out_on_pgd)
    lines = []
    rows = benchmark.measure_model("preact_resnet18", torch.device("cpu"), 1, iters=1, warmup=0,
                                   workloads=("pgd20", "forward"), paths=("fast",), skip_out_of_memory=True,
                                   log=lines.append)
    assert [m.workload for m in rows] == ["forward"]
    assert any("pgd20" in line and "out of memory at batch 1: skipped" in line for line in lines)
    with pytest.raises(torch.OutOfMemoryError):
        benchmark.measure_model("preact_resnet18", torch.device("cpu"), 1, iters=1, warmup=0, workloads=("pgd20",),
                                paths=("fast",), log=lines.append)

