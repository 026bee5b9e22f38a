"""FLOPs per image of a forward pass, counted by torch's FlopCounterMode (2 FLOPs per multiply-add,
convolutions and matrix products only; absent RobNet edges are skipped, so they count zero)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..runtime import eval_mode


def flops_per_image(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Forward FLOPs for one image of shape ``input_size`` (model in eval mode, mode restored)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, *input_size, device=device)
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())
