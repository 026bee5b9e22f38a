"""RobNet architectures: genotype codes, edge operations, cells, networks and the model registry."""

from .genotype import CellGenotype, EdgeOp, Genotype, edges_per_cell
from .network import InputNormalization, RobNet
from . import baselines  # noqa: F401  (registers the baseline models)
from .registry import ROBNET_FREE, ROBNET_LARGE, ModelInfo, create_model, list_models, model_info, register_model

__all__ = [
    "CellGenotype", "EdgeOp", "Genotype", "edges_per_cell", "InputNormalization", "RobNet", "ROBNET_FREE",
    "ROBNET_LARGE", "ModelInfo", "create_model", "list_models", "model_info", "register_model",
]
