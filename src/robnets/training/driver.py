"""The training driver: load the config (or a run's saved one, to resume), join the process group, train."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..config import load_config
from ..errors import RobnetsError
from ..runtime import resolve_device
from ..distributed import init_distributed, shutdown
from .trainer import STATE_FILE, Trainer, TrainResult


def run_training(config_path: str | os.PathLike | None, overrides: Sequence[str] = (), *,
                 output_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                 resume: str | os.PathLike | None = None, distributed: bool = False,
                 progress: bool = True) -> TrainResult:
    """Train the run ``config_path`` describes (with dotted ``overrides``), or continue the run folder
    ``resume`` from its own config.yaml; one process of a torchrun/slurm job with ``distributed``."""
    overrides = list(overrides)
    if resume is not None:
        folder = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        saved = folder / "config.yaml"
        if not saved.is_file():
            raise RobnetsError(f"--resume {resume}: expected a run folder with config.yaml (and {STATE_FILE})")
        config = load_config(saved, overrides)
        if not (folder / STATE_FILE).is_file():  # stopped before its first save: nothing to continue yet
            logging.getLogger("robnets.training").info(
                f"{folder} holds no {STATE_FILE} yet (stopped before its first save): starting it from the "
                f"beginning with its config.yaml")
            resume, output_dir = None, folder
    else:
        config = load_config(config_path, overrides)
    ctx = init_distributed(resolve_device(config.train.device).type, required=distributed)
    try:
        return Trainer(config, output_dir=output_dir, data_dir=data_dir, resume=resume, ctx=ctx,
                       progress=progress).run()
    finally:
        shutdown(ctx)
