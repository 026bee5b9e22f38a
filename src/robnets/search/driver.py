"""The search driver: load the config (or a search folder's saved one, to resume or re-score), join the
process group, search."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..config import load_config
from ..errors import RobnetsError
from ..runtime import resolve_device
from ..distributed import init_distributed, shutdown
from .runner import Search, SearchResult


def run_search(config_path: str | os.PathLike | None, overrides: Sequence[str] = (), *,
               output_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
               resume: str | os.PathLike | None = None, distributed: bool = False,
               progress: bool = True) -> tuple[SearchResult, bool]:
    """Run the search ``config_path`` describes, or continue the search folder ``resume`` from its own
    config.yaml; returns the result and whether this process is the main one (it reports)."""
    overrides = list(overrides)
    folder = output_dir
    if resume is not None:
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise RobnetsError(f"--resume {resume}: expected a search folder holding config.yaml")
        config, folder = load_config(saved, overrides), resume
    else:
        if config_path is None:
            raise RobnetsError("robnets search needs --config FILE (e.g. experiments/search_cifar10/config.yaml) "
                               "or --resume FOLDER")
        config = load_config(config_path, overrides)
    ctx = init_distributed(resolve_device(config.search.device).type, required=distributed)
    try:
        result = Search(config, output_dir=folder, data_dir=data_dir, ctx=ctx, progress=progress).run()
    finally:
        shutdown(ctx)
    return result, ctx.is_main


def rescore_search(folder: str | os.PathLike, overrides: Sequence[str], count: int, finetune_seed: int, *,
                   data_dir: str | os.PathLike | None = None, progress: bool = True) -> tuple[Search, dict | None]:
    """Score ``count`` candidates of a finished search again with another fine-tuning seed (the ranking's
    noise floor); the floor is None when stopped by a signal (run again to continue)."""
    saved = Path(folder) / "config.yaml"
    if not saved.is_file():
        raise RobnetsError(f"--rescore {folder}: expected a finished search folder holding config.yaml")
    search = Search(load_config(saved, list(overrides)), output_dir=folder, data_dir=data_dir, progress=progress)
    return search, search.rescore(count, finetune_seed)
