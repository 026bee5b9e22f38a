"""One call from Python to a robustness evaluation: ``robnets.evaluate(model, "cifar10", suite="autoattack")``.

The same pipeline as ``robnets eval`` (blocks, resumable folders, results.json / results.md, a model card for
AutoAttack, sanity flags), for any ``nn.Module`` that follows the model contract: float NCHW input in [0, 1],
logits out. RobustBench's ``benchmark(model, dataset=..., threat_model=..., eps=..., n_examples=...)`` is the
shape it follows.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from ..config import load_config
from .pipeline import EvaluationRun, run_evaluation


def evaluate_model(model: nn.Module, data: str = "cifar10", *, suite: str | None = "quick",
                   attacks: list[str] | None = None, n: int | None = None, n_attack: int | None = None,
                   norm: str = "Linf", eps: float | None = None, data_dir: str | Path | None = None,
                   device: str = "auto", batch_size: int | None = None, output_dir: str | Path | None = None,
                   sanity: str = "quick", precision: str = "fp32", progress: bool = False,
                   log=logging.getLogger("robnets.evaluation").info) -> EvaluationRun:  # noqa: ANN001, B008
    """Evaluate ``model`` on the test split of ``data`` (a dataset name: cifar10, cifar100, svhn, imagenet,
    cifar10-sample) with a named ``suite`` (quick, paper, autoattack) or a list of ``attacks``; ``n`` bounds the
    points, ``n_attack`` the attacked ones; ``eps`` defaults to 8/255 (L∞) or 0.5 (L2). Returns the run (results,
    folder, files, metadata) exactly as ``robnets eval`` writes it, with the same numbers for the same model and
    settings. ``output_dir`` set: the same call resumes an interrupted run there."""
    from .suites import SUITES

    chosen = attacks if attacks is not None else SUITES[suite] if suite is not None else ["clean"]
    overrides = [f"data.dataset={data}", f"eval.attacks={','.join(chosen)}", f"attack.norm={norm}",
                 f"eval.device={device}", f"eval.sanity={sanity}", f"eval.precision={precision}", "name=python"]
    if eps is not None:
        overrides.append(f"attack.{'eps' if norm == 'Linf' else 'l2_eps'}={eps}")
    if n is not None:
        overrides.append(f"eval.n={n}")
    if batch_size is not None:
        overrides.append(f"eval.batch_size={batch_size}")
    config = load_config(None, overrides)
    config.model.name = getattr(model, "registry_name", None) or type(model).__name__
    return run_evaluation(config, model=model, data_dir=data_dir, output_dir=output_dir, n_attack=n_attack,
                          progress=progress, log=log)
