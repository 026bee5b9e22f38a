"""Model registry and factory (shape after timm): ``@register_model`` records a builder and its metadata;
``create_model(name, **overrides)`` builds it; ``list_models()`` names everything registered."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import RobnetsError, did_you_mean
from .genotype import Genotype
from .network import RobNet

# Argument names of the original implementation's ``Network`` mapped to ours, so that a config's
# ``model_param`` dict can be passed straight to ``create_model``.
ORIGINAL_ARGUMENT_ALIASES = {"AdPoolSize": "adaptive_pool_size", "ImgNetBB": "imagenet_stem"}


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is: defaults, input contract, provenance and published results."""

    name: str
    builder: Callable[..., nn.Module]
    default_args: dict[str, Any]
    description: str
    genotype: Genotype | None = None
    input_size: tuple[int, int, int] = (3, 32, 32)
    paper: str = ""
    published: dict[str, float] = field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str | None = None,
    *,
    description: str = "",
    genotype: Genotype | None = None,
    input_size: tuple[int, int, int] = (3, 32, 32),
    paper: str = "",
    published: dict[str, float] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model builder under ``name`` (default: the function's name)."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        # tuples as lists: the form a model's ``config`` and a checkpoint's JSON metadata hold
        defaults = {
            p.name: list(p.default) if isinstance(p.default, tuple) else p.default
            for p in inspect.signature(fn).parameters.values()
            if p.default is not inspect.Parameter.empty
        }
        _REGISTRY[key] = ModelInfo(
            name=key, builder=fn, default_args=defaults, description=description or (fn.__doc__ or "").strip(),
            genotype=genotype, input_size=input_size, paper=paper, published=dict(published or {}),
        )
        return fn

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model; unknown names raise with the closest matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RobnetsError(
            f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}; `robnets list-models` shows all"
        ) from None


def normalize_model_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Translate original argument names (``AdPoolSize``, ``ImgNetBB``) to ours."""
    out = {}
    for key, value in kwargs.items():
        key = ORIGINAL_ARGUMENT_ALIASES.get(key, key)
        if key in out:
            raise RobnetsError(f"model argument {key!r} given twice (once under its original name)")
        out[key] = value
    return out


def create_model(name: str, pretrained: bool | str = False, **kwargs: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model('robnet_free', num_classes=10)``.

    Keyword arguments override the registered defaults; the original implementation's names
    (``AdPoolSize``, ``ImgNetBB``) are accepted too. ``pretrained=True`` loads the model's default published
    weights, ``pretrained='<tag>'`` (or the name ``'<model>.<tag>'``) named ones, verified by sha256
    (``robnets weights`` lists them). With ``num_classes`` other than the weights' (fine-tuning, as in timm) the
    published backbone is loaded and the classifier replaced by a new one of that size, said in one log line.
    The model is returned in eval mode.
    """
    if "." in name:
        name, tag = name.split(".", 1)
        if pretrained not in (False, True, tag, f"{name}.{tag}"):
            raise RobnetsError(f"create_model({name}.{tag!r}) names weights already; drop pretrained={pretrained!r}")
        pretrained = f"{name}.{tag}"
    info = model_info(name)
    kwargs = normalize_model_args(kwargs)
    weights = None
    if pretrained:
        from .pretrained import pretrained_info, pretrained_model_args

        weights = pretrained if isinstance(pretrained, str) and "." in pretrained else (
            f"{name}.{pretrained}" if isinstance(pretrained, str) else name)
        entry = pretrained_info(weights)
        if entry.model != name:
            raise RobnetsError(f"published weights {entry.name} belong to model {entry.model!r}, not {name!r}")
        weights = entry.name
        saved = pretrained_model_args(weights)
        new_classes = kwargs.pop("num_classes", None)
        if new_classes is not None and new_classes == saved.get("num_classes"):
            new_classes = None
        kwargs = {**saved, **kwargs}
    accepted = inspect.signature(info.builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    if not takes_any:
        for key in kwargs:
            if key not in accepted:
                raise RobnetsError(
                    f"model {name!r} has no argument {key!r}{did_you_mean(key, accepted)}; "
                    f"accepted: {', '.join(accepted)}"
                )
    model = info.builder(**kwargs)
    model.registry_name = name
    if weights is not None:
        from .pretrained import load_pretrained

        load_pretrained(model, weights)
        if new_classes is not None:
            _replace_classifier(model, new_classes, weights)
    model.eval()
    return model


def _replace_classifier(model: nn.Module, num_classes: int, weights: str) -> None:
    """A new classifier of ``num_classes`` outputs on the loaded backbone (fine-tuning), said in one log line."""
    import logging

    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise RobnetsError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    attribute = "classifier" if isinstance(getattr(model, "classifier", None), nn.Linear) else "linear"
    old = getattr(model, attribute, None)
    if not isinstance(old, nn.Linear):
        raise RobnetsError(f"{type(model).__name__} has no linear classifier to replace for num_classes={num_classes}")
    setattr(model, attribute, nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype))
    if isinstance(getattr(model, "config", None), dict):
        model.config["num_classes"] = num_classes
    logging.getLogger("robnets.models").info(
        f"create_model: published weights {weights} loaded as the backbone; its {old.out_features}-class classifier "
        f"replaced by a new {num_classes}-class one (randomly initialized: fine-tune it)")


# --------------------------------------------------------------------------------------------- RobNets
# Published architecture codes (RobNets, Guo et al. CVPR 2020), in canonical string form; the 2-bit lists
# of the original release are recovered with ``Genotype.to_codes()``.
ROBNET_FREE = Genotype.parse(
    "1110-111110-11010110-1111001101_1100-011001-00101000-0111101100_1111-110101-11010010-0010100011_"
    "1011-100101-10100110-1100000110_1111-010010-10100110-0100100111_1110-111111-01101100-1001110111_"
    "1111-111010-01111001-1010100110_0111-111101-11111101-1101111000_1111-111111-01011110-0100100111_"
    "1011-010011-11101101-1111111100_1110-110000-00110001-1000011011_0111-011111-10101110-1101111000_"
    "1111-101001-00101111-0110100001_0111-111101-01110101-1111011010_0111-111111-01000110-1011101011_"
    "1111-001111-01000110-0011011111_1111-011111-10111010-1010101111_1011-011111-01110011-1100100001_"
    "1110-111111-11111011-0011011111_1111-010111-11010000-1000010111"
)
ROBNET_LARGE = Genotype.parse("1111-111111-01110110-1101010111")

_PAPER = "Guo et al., When NAS Meets Robustness: In Search of Robust Architectures (CVPR 2020)"


@register_model(
    description="RobNet_free: cell-free RobNet (20 cells, each with its own genotype), C=36",
    genotype=ROBNET_FREE, paper=_PAPER, published={"clean": 82.8, "pgd20": 52.7},
)
def robnet_free(C: int = 36, num_classes: int = 10, layers: int = 20, steps: int = 4, multiplier: int = 4,
                stem_multiplier: int = 3, share: bool = False, adaptive_pool_size: int = 1,
                imagenet_stem: bool = False, mean: list[float] | None = None,
                std: list[float] | None = None) -> RobNet:
    """RobNet_free (CIFAR-10 / SVHN)."""
    return RobNet(ROBNET_FREE, **locals())


@register_model(
    description="RobNet_large (v1): one cell genotype shared by 20 cells, C=36",
    genotype=ROBNET_LARGE, paper=_PAPER,
)
def robnet_large_v1(C: int = 36, num_classes: int = 10, layers: int = 20, steps: int = 4, multiplier: int = 4,
                    stem_multiplier: int = 3, share: bool = True, adaptive_pool_size: int = 1,
                    imagenet_stem: bool = False, mean: list[float] | None = None,
                    std: list[float] | None = None) -> RobNet:
    """RobNet_large (v1); with C=48, num_classes=1000, imagenet_stem=True the ImageNet model."""
    return RobNet(ROBNET_LARGE, **locals())


@register_model(
    description="RobNet_large_v2: the RobNet_large cell, wider and deeper (33 cells, C=64)",
    genotype=ROBNET_LARGE, paper=_PAPER,
)
def robnet_large_v2(C: int = 64, num_classes: int = 10, layers: int = 33, steps: int = 4, multiplier: int = 4,
                    stem_multiplier: int = 3, share: bool = True, adaptive_pool_size: int = 1,
                    imagenet_stem: bool = False, mean: list[float] | None = None,
                    std: list[float] | None = None) -> RobNet:
    """RobNet_large_v2 (CIFAR-10)."""
    return RobNet(ROBNET_LARGE, **locals())


@register_model(
    description="RobNet_compact: the RobNet_large cell in a small network (5 cells, C=16, 0.41 M parameters)",
    genotype=ROBNET_LARGE, paper=_PAPER,
)
def robnet_compact(C: int = 16, num_classes: int = 10, layers: int = 5, steps: int = 4, multiplier: int = 4,
                   stem_multiplier: int = 3, share: bool = True, adaptive_pool_size: int = 1,
                   imagenet_stem: bool = False, mean: list[float] | None = None,
                   std: list[float] | None = None) -> RobNet:
    """The RobNet_large cell at a size that trains and attacks on a CPU (not the paper's 6.8 M robnet_large_v1)."""
    return RobNet(ROBNET_LARGE, **locals())


@register_model(description="Any RobNet genotype, given as genotype=<canonical string or 2-bit code list>",
                paper=_PAPER)
def robnet(genotype: Any = None, C: int = 36, num_classes: int = 10, layers: int | None = None, steps: int = 4,
           multiplier: int = 4, stem_multiplier: int = 3, share: bool | None = None,
           adaptive_pool_size: int = 1, imagenet_stem: bool = False, mean: list[float] | None = None,
           std: list[float] | None = None) -> RobNet:
    """A RobNet with an arbitrary genotype; ``layers`` defaults to its cell count (20 for a shared cell)."""
    if genotype is None:
        raise RobnetsError("model 'robnet' needs genotype=<canonical string or 2-bit code list>")
    if not isinstance(genotype, Genotype):
        genotype = Genotype.parse(genotype) if isinstance(genotype, str) else Genotype.from_codes(genotype)
    if layers is None:
        layers = 20 if genotype.is_shared else len(genotype.cells)
    kwargs = dict(locals())
    del kwargs["genotype"]
    return RobNet(genotype, **kwargs)
