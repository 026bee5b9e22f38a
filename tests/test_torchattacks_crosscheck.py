"""Cross-check against an independent implementation (torchattacks) on a small adversarially trained model:
APGD-CE and AutoAttack-standard as robnets runs them (the reference implementation behind this project's
wrapper) agree with torchattacks' within a point."""

from __future__ import annotations

import pytest
import torch

from robnets.attacks import APGD, PGD, AutoAttack
from robnets.data import load_sample
from .helpers import tiny_robust_cnn

torchattacks = pytest.importorskip("torchattacks", reason="torchattacks (optional test dependency) is not installed")

EPS = 8 / 255


@pytest.fixture(scope="module")
def robust_cnn():
    """A tiny CNN adversarially trained (FGSM with random start, then PGD-3) on 400 real CIFAR-10 images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x, y = load_sample().batch(0, 400)
    model = tiny_robust_cnn(x, y, eps=EPS)
    torch.set_num_threads(threads)  # one thread made the training reproducible; the attacks may use all
    yield model, x, y


def _accuracy(model, x, y):
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.slow
def test_the_model_is_robust_enough_to_make_the_comparison_meaningful(robust_cnn):
    model, x, y = robust_cnn
    robust = _accuracy(model, PGD(model, eps=EPS, alpha=2 / 255, steps=20, seed=0)(x, y), y)
    assert 15 <= robust <= 90, robust


@pytest.mark.slow
def test_apgd_ce_agrees_with_torchattacks(robust_cnn):
    model, x, y = robust_cnn
    ours = _accuracy(model, APGD(model, eps=EPS, steps=100, seed=0)(x, y), y)
    theirs = _accuracy(model, torchattacks.APGD(model, norm="Linf", eps=EPS, steps=100, n_restarts=1, loss="ce",
                                                seed=0)(x, y), y)
    assert abs(ours - theirs) <= 1.0, (ours, theirs)


@pytest.mark.slow
def test_autoattack_standard_agrees_with_torchattacks(robust_cnn):
    """torchattacks' "standard" AutoAttack runs APGD-CE, APGD-T and FAB-T with 10 iterations (its defaults),
    ours with the official 100: ours must be at least as strong, and on this model they agree within a point."""
    model, x, y = robust_cnn
    aa = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0, log=lambda m: None)
    x, y = x[:40], y[:40]  # 40 points: the whole cascade twice in ~25 s on 2 cores
    ours = _accuracy(model, aa.run_standard_evaluation(x, y, bs=40), y)
    theirs_attack = torchattacks.AutoAttack(model, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=0)
    theirs = _accuracy(model, theirs_attack(x, y), y)
    assert abs(ours - theirs) <= 100 / 40 + 1e-9, (ours, theirs)  # at most one point apart
    assert ours == pytest.approx(100 * aa.robust_accuracy)
