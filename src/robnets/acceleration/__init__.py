"""The default fast path (same function, less time): :class:`FastRobNet` (absent edges skipped, BatchNorm
folded, shared ReLUs, channels-last), the choice of the path that applies (:func:`accelerate`), compiled
training steps, and PGD's inner loop as a captured CUDA graph (:class:`GraphedPGDLoop`, handed to the attack)."""

from .cuda_graphs import GraphedPGDLoop
from .fast_robnet import FastRobNet
from .folding import FoldedConv, fold_parameters
from .select import (EXECUTION_MODES, accelerate, compile_backend_from_environment, compile_for_training,
                     compile_from_environment, cuda_graphs_enabled, pgd_loop_for)

__all__ = ["EXECUTION_MODES", "FastRobNet", "FoldedConv", "GraphedPGDLoop", "accelerate",
           "compile_backend_from_environment", "compile_for_training", "compile_from_environment",
           "cuda_graphs_enabled", "fold_parameters", "pgd_loop_for"]
