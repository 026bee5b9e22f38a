"""Robustness evaluation: accuracy under a list of attacks, result JSON and tables."""

from .compare import mcnemar, paired_difference
from .report import results_table, write_results
from ..runtime import resolve_device
from .runner import AttackResult, evaluate, iterate_batches

__all__ = ["AttackResult", "evaluate", "iterate_batches", "mcnemar", "paired_difference", "resolve_device",
           "results_table", "write_results"]
