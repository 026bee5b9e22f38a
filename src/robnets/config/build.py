"""From a config to the model it describes: the one builder evaluation, training and search use."""

from __future__ import annotations

import torch
from torch import nn

from ..models import create_model
from .schema import Config


def build_model(config: Config, device: torch.device | str | None = None) -> nn.Module:
    """The model ``config.model`` describes (the registry's ``create_model``), with untrained weights drawn from
    ``config.seed`` (the same initial weights in every process of a run), on ``device``."""
    torch.manual_seed(config.seed)
    model = create_model(config.model.name, **config.model.model_kwargs())
    return model if device is None else model.to(device)
