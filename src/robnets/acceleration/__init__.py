"""Fast execution paths (same function, less time): FastRobNet, BatchNorm folding, fused Triton kernels,
CUDA-graph attack loops, compiled training steps, and the selection of the path that applies."""

from .fast_robnet import FastRobNet
from .folding import FoldedConv, fold_parameters
from .select import (EXECUTION_MODES, accelerate, compile_backend_from_environment, compile_for_training,
                     compile_from_environment, cuda_graphs_enabled, kernels_from_environment, triton_usable)

__all__ = ["EXECUTION_MODES", "FastRobNet", "FoldedConv", "accelerate", "compile_backend_from_environment",
           "compile_for_training", "compile_from_environment", "cuda_graphs_enabled", "fold_parameters",
           "kernels_from_environment", "triton_usable"]
