"""Learning-rate schedule and optimizer of the original RobNets recipe.

Schedule (original ``lr_scheduler.CosineLRScheduler``, stepped once per epoch): during ``warmup_epochs``
the rate rises linearly from ``warmup_lr`` to ``lr``; then it follows a cosine from ``lr`` down to
``lr_min`` over ``epochs`` more epochs. Original CIFAR recipe: 0.02 -> 1.2 over 20 epochs, then
1.2 -> 0.001 over 150 epochs (170 in all) at batch 1536. ``per_step=True`` evaluates the same curve at
fractional epochs (smoother, for short runs).

Optimizer: SGD with momentum; weight decay is not applied to BatchNorm parameters or to any bias (the
original ``param_group_no_wd``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def learning_rate(epoch: float, *, lr: float, lr_min: float, epochs: int, warmup_epochs: int = 0,
                  warmup_lr: float | None = None) -> float:
    """Rate at (possibly fractional) ``epoch`` counted from 0 over ``warmup_epochs + epochs`` epochs."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        start = lr if warmup_lr is None else warmup_lr
        return start + (epoch / warmup_epochs) * (lr - start)
    progress = (epoch - warmup_epochs) / max(epochs, 1)
    progress = min(max(progress, 0.0), 1.0)
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * progress)) / 2


def scaled_lr(lr: float, global_batch: int, reference_batch: int) -> float:
    """Linear scaling rule: the published rates were tuned at ``reference_batch``."""
    return lr * global_batch / reference_batch


def no_weight_decay_groups(model: nn.Module, weight_decay: float, no_wd: bool = True) -> list[dict]:
    """Two parameter groups: decayed weights, and BatchNorm parameters plus all biases without decay."""
    if not no_wd:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    exempt: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            exempt.update(id(p) for p in module.parameters(recurse=False))
        elif getattr(module, "bias", None) is not None and isinstance(module.bias, nn.Parameter):
            exempt.add(id(module.bias))
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in exempt]
    free = [p for p in model.parameters() if p.requires_grad and id(p) in exempt]
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": free, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
                    no_wd: bool = True) -> torch.optim.SGD:
    return torch.optim.SGD(no_weight_decay_groups(model, weight_decay, no_wd), lr=lr, momentum=momentum,
                           weight_decay=weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value
