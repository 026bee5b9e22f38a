"""robnets: adversarially robust neural architectures (RobNets, Guo et al. CVPR 2020, and beyond)."""

from .errors import RobnetsError
from .models import Genotype, RobNet, create_model, list_models, model_info, register_model
from .models.loading import load_model
from .version import __version__

__all__ = ["Genotype", "RobNet", "RobnetsError", "create_model", "evaluate", "list_models", "load_model",
           "model_info", "register_model", "__version__"]


def __getattr__(name: str):  # noqa: ANN202
    """``robnets.evaluate`` (robnets.evaluation.api.evaluate_model), imported when first used."""
    if name == "evaluate":
        from .evaluation.api import evaluate_model

        return evaluate_model
    raise AttributeError(f"module 'robnets' has no attribute {name!r}")
