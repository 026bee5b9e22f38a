"""A small adversarially trained model for cross-checking attack implementations in seconds on a CPU.

Comparing two implementations of an attack is only meaningful on a model that is robust to some degree (on
an undefended model every attack reaches ~0 % and any two agree). ``tiny_robust_cnn`` trains a two-layer CNN
with FGSM and a random start, then PGD-3, for 30 epochs on the given images (``tiny_cnn`` also trains it
without attacks, for tests that need a merely accurate model); the test suite's cross-check
against torchattacks and ``benchmarks/autoattack_vs_torchattacks.py`` use it on 400 embedded CIFAR-10 images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robnets.attacks import PGD


def tiny_cnn(x: torch.Tensor, y: torch.Tensor, *, width: int = 16, epochs: int = 30, lr: float = 2e-3,
             adversarial: bool = True, eps: float = 8 / 255, batch_size: int = 50) -> nn.Module:
    """A two-layer CNN (``width`` and 2 x ``width`` channels) trained with Adam on (x, y): adversarially (the
    first half of the epochs FGSM with a random start, then PGD-3) or, with ``adversarial=False``, on clean
    images. Returned in eval mode with frozen parameters; seeded, so the same on every run with one thread."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(2 * width * 8 * 8, 10))
    opt = torch.optim.Adam(model.parameters(), lr)
    g = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            inputs = x[idx]
            if adversarial:
                single_step = epoch < epochs // 2
                attack = PGD(model, eps=eps, alpha=1.25 * eps if single_step else eps / 2,
                             steps=1 if single_step else 3, seed=epoch * 100 + i)
                inputs = attack(inputs, y[idx])
            model.train()
            loss = F.cross_entropy(model(inputs), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    return model


def tiny_robust_cnn(x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255) -> nn.Module:
    """The cross-check model: :func:`tiny_cnn` with its defaults (adversarial training, 30 epochs)."""
    return tiny_cnn(x, y, eps=eps)


def tiny_robnet_weights(path, epochs: int = 12):  # noqa: ANN001, ANN201
    """A RobNet-large cell network of width 4 and 3 cells trained on clean images for a few seconds (the first
    400 embedded CIFAR-10 images), saved with metadata at ``path``: real weights for end-to-end evaluation tests
    (an untrained network gets almost every point wrong, so attacks would have nothing to do)."""
    from robnets.data import load_sample
    from robnets.models import create_model
    from robnets.models.checkpoint import save_weights

    torch.manual_seed(0)
    x, y = load_sample().batch(0, 400)
    model = create_model("robnet_large_v1", C=4, layers=3)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 50):
            idx = perm[i:i + 50]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return save_weights(model, path, model_name="robnet_large_v1", dataset="cifar10")
