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


def check_training_folder(folder: Path, given: str | os.PathLike) -> None:
    """One error line unless ``folder`` is a training run (its config.yaml, and state.pt or train.log, which the
    trainer writes before anything else); nothing is written."""
    if not folder.is_dir():
        raise RobnetsError(f"--resume {given}: {folder} does not exist; give the run folder of a training run")
    names = {p.name for p in folder.iterdir()}
    other = ("an evaluation" if names & {"results.json", "shard.json", "blocks.jsonl"} or any(
        n.startswith("shard-") for n in names) else "a search" if names & {"search.log", "scoring_key.json",
                                                                          "candidates.json", "supernet.safetensors",
                                                                          "supernet_state.pt"} else None)
    if other or "config.yaml" not in names or not names & {STATE_FILE, "train.log"}:
        what = f"it holds {other} run" if other else ("it is empty: no config.yaml, train.log or state.pt" if not
                                                      names else "it has no config.yaml with a train.log or state.pt")
        raise RobnetsError(f"--resume {given}: {folder} is not a training run ({what}); give the folder a "
                           f"`robnets train` run wrote (it printed 'resume with --resume FOLDER')")


def run_training(config_path: str | os.PathLike | None, overrides: Sequence[str] = (), *,
                 output_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                 resume: str | os.PathLike | None = None, distributed: bool = False,
                 progress: bool = True) -> TrainResult:
    """Train the run ``config_path`` describes (with dotted ``overrides``), or continue the run folder
    ``resume`` from its own config.yaml; one process of a torchrun/slurm job with ``distributed``."""
    overrides = list(overrides)
    if resume is not None:
        folder = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        check_training_folder(folder, resume)
        config = load_config(folder / "config.yaml", overrides)
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
