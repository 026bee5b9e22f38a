"""Sanity flags fire on models built to trigger them and stay silent on a normal model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robnets.evaluation import sanity
from robnets.evaluation.sanity import run_sanity_checks


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


class SoftmaxHead(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return F.softmax(self.inner(x) * 50, dim=1)


class Randomized(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.05 * torch.randn_like(x))


class Quantized(nn.Module):
    """Gradient masking: the input is rounded to a few levels, so the input gradient is zero everywhere."""

    def __init__(self, inner, levels=3):
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x):
        return self.inner(torch.round(x * self.levels) / self.levels)


class Stateful(nn.Module):
    """Answers differently after its first call: breaks 'eps = 0 gives the clean accuracy'."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.inner(x)
        return out if self.calls == 1 else out.roll(1, dims=1)


@pytest.fixture
def tiny_robnet():
    """Overrides the suite-wide fixture with a small CNN: the full checks run ~100 attack passes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(64, 10))


def _fired(flags, with_chance=False):
    """The flags that fired; chance_level left out by default (random labels put these models at chance; the
    flag has tests of its own)."""
    return {f.name for f in flags if f.fired and (with_chance or f.name != "chance_level")}


def test_a_normal_model_raises_no_flag(tiny_robnet):
    x, _ = _data()
    with torch.no_grad():
        y = tiny_robnet.eval()(x).argmax(1)  # labels it gets right: clean accuracy above chance
    flags = run_sanity_checks(tiny_robnet.eval(), x, y, level="full")
    assert _fired(flags, with_chance=True) == set()
    assert {f.name for f in flags} >= {"train_mode", "randomized_outputs", "probability_outputs", "zero_gradients",
                                       "eps_zero", "monotone_in_eps", "monotone_in_steps", "large_eps",
                                       "black_box_vs_white_box"}
    assert all("\n" not in f.message for f in flags)


def test_clean_accuracy_at_chance_is_flagged(tiny_robnet):
    x, _ = _data()
    with torch.no_grad():
        wrong = (tiny_robnet.eval()(x).argmax(1) + 1) % 10
    flags = {f.name: f for f in run_sanity_checks(tiny_robnet.eval(), x, wrong, num_classes=10)}
    assert flags["chance_level"].fired and "at or below chance (10.0% for 10 classes)" in flags["chance_level"].message
    assert flags["chance_level"].details["clean"] == 0.0


def test_train_mode_flag(tiny_robnet):
    x, y = _data()
    tiny_robnet.train()
    flags = run_sanity_checks(tiny_robnet, x, y, level="quick")
    assert _fired(flags) == {"train_mode"}
    assert tiny_robnet.training  # the checks leave the model as they found it


def test_softmax_head_is_flagged(tiny_robnet):
    x, y = _data()
    assert "probability_outputs" in _fired(run_sanity_checks(SoftmaxHead(tiny_robnet).eval(), x, y))


def test_randomized_forward_is_flagged(tiny_robnet):
    x, y = _data()
    assert "randomized_outputs" in _fired(run_sanity_checks(Randomized(tiny_robnet).eval(), x, y))


def test_gradient_masking_layer_is_flagged(tiny_robnet):
    x, y = _data()
    fired = _fired(run_sanity_checks(Quantized(tiny_robnet).eval(), x, y, level="full"))
    assert {"zero_gradients", "large_eps"} <= fired


def test_eps_zero_flag(tiny_robnet):
    x, y = _data()
    assert "eps_zero" in _fired([sanity.check_eps_zero(Stateful(tiny_robnet).eval(), x, y, "fp32")])


def test_monotonicity_flags(monkeypatch, tiny_robnet):
    x, y = _data()
    accuracies = iter([10.0, 30.0, 50.0])  # accuracy rising with eps
    monkeypatch.setattr(sanity, "_pgd_acc", lambda *a, **k: next(accuracies))
    assert sanity.check_monotone_eps(tiny_robnet, x, y, 8 / 255, "fp32", 1.0).fired
    accuracies = iter([20.0, 40.0])  # PGD-5 then PGD-50
    monkeypatch.setattr(sanity, "_pgd_acc", lambda *a, **k: next(accuracies))
    assert sanity.check_monotone_steps(tiny_robnet, x, y, 8 / 255, "fp32", 1.0).fired
    accuracies = iter([40.0, 20.0])
    monkeypatch.setattr(sanity, "_pgd_acc", lambda *a, **k: next(accuracies))
    assert not sanity.check_monotone_steps(tiny_robnet, x, y, 8 / 255, "fp32", 1.0).fired


def test_black_box_beating_white_box_is_flagged(tiny_robnet):
    x, y = _data(32)
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))  # its output depends on every pixel
    masked = Quantized(linear, levels=15).eval()  # level spacing 1/15 < eps: Square can cross levels
    with torch.no_grad():
        y = masked(x).argmax(1)  # all correct: only the attacks decide
    flag = sanity.check_black_box(masked, x, y, 16 / 255, "fp32", 100 / 32, queries=300)
    assert flag.fired, flag.message
