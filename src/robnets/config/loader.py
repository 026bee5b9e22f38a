"""Load configs (YAML or original ``config.py``) into dataclasses, apply dotted overrides, save them."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, RobnetsError, did_you_mean
from ..io import write_text_atomic
from .original import evaluate_expression, load_original_config_file
from .schema import Config

_CHOICES = {"attack.norm": ("Linf", "L2", "L1"), "eval.precision": ("fp32", "bf16"),
            "eval.device": ("auto", "cpu", "cuda"), "eval.execution": ("fast", "plain"), "eval.sanity": ("off", "quick", "full"),
            "eval.autoattack_version": ("standard", "plus", "rand"),
            "train.method": ("pgd", "fgsm_rs", "nfgsm", "trades", "standard"), "train.precision": ("fp32", "bf16"),
            "train.save_dtype": ("fp32", "fp16"), "train.device": ("auto", "cpu", "cuda"),
            "search.method": ("pgd", "fgsm_rs", "nfgsm", "trades", "standard"),
            "search.precision": ("fp32", "bf16"), "search.device": ("auto", "cpu", "cuda"),
            "search.sampling": ("uniform", "density", "budget")}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert) ``value`` against the annotation ``tp``; raise naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        (item_type,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):
            value = evaluate_expression(value, where)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a string, got {value!r} (YAML reads unquoted on/off/yes/no as "
                              f"booleans: quote the word, e.g. '{'on' if value else 'off'}')")
        raise ConfigError(f"{where} must be a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {_describe(tp)}")


def build_dataclass(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate a (nested) config dataclass from a dict, refusing unknown keys and bad values."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(values).__name__}")
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"unknown config key {where!r}{did_you_mean(str(key), names)}; "
                              f"known keys here: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value or {}, f"{where}.")
        else:
            kwargs[key] = _coerce(value, tp, where)
    return cls(**kwargs)


def validate(config: Config) -> Config:
    """Checks that need more than a type: choices, ranges, dataset and model names."""
    from ..data import canonical_dataset_name
    from ..models import model_info

    for dotted, choices in _CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise ConfigError(f"{dotted} must be one of {', '.join(choices)}, got {value!r}")
    try:
        config.data.dataset = canonical_dataset_name(config.data.dataset)
    except RobnetsError as exc:
        raise ConfigError(f"data.dataset: {exc}") from None
    try:
        model_info(config.model.name)
    except RobnetsError as exc:
        raise ConfigError(f"model.name: {exc}") from None
    for dotted in ("attack.eps", "attack.step_size", "attack.l2_eps", "attack.l2_step_size", "attack.steps",
                   "data.batch_size", "train.epochs", "train.co_probe_size", "train.attack_steps",
                   "train.val_attack_steps", "search.eval_attack_steps", "search.finetune_steps"):
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if not (value >= 0 and math.isfinite(value)):  # also refuses NaN and inf
            raise ConfigError(f"{dotted} must be a finite non-negative number, got {value}")
    for dotted in ("attack.eps", "attack.step_size"):
        value = getattr(config.attack, dotted.split(".")[1])
        if value > 1:
            raise ConfigError(f"{dotted}={value} exceeds the whole [0, 1] pixel range; L-inf budgets are fractions "
                              f"of it (8/255 = {8 / 255:.6f})")
    if config.eval.block_size < 1:
        raise ConfigError(f"eval.block_size must be at least 1, got {config.eval.block_size}")
    if config.data.batch_size < 1:
        raise ConfigError(f"data.batch_size must be at least 1, got {config.data.batch_size}")
    if config.eval.compile and config.eval.execution != "fast":
        raise ConfigError("eval.compile=true compiles the fast path; set eval.execution=fast or eval.compile=false")
    s = config.search
    for key in ("C", "layers", "steps", "batch_size", "num_samples", "eval_size", "fsp_size"):
        if getattr(s, key) < 1:
            raise ConfigError(f"search.{key} must be at least 1, got {getattr(s, key)}")
    if s.C % 2:
        raise ConfigError(f"search.C must be even, got {s.C}")
    if s.finetune_seed < 0:
        raise ConfigError(f"search.finetune_seed must be a non-negative integer, got {s.finetune_seed}")
    if not 0.0 < s.fsp_keep <= 1.0:
        raise ConfigError(f"search.fsp_keep must lie in (0, 1], got {s.fsp_keep}")
    return config


def bundled_configs() -> dict[str, Path]:
    """The experiment configs shipped in the package (``robnets/experiments/<name>.yaml``), by name."""
    from importlib import resources

    folder = resources.files("robnets").joinpath("experiments")
    if not folder.is_dir():
        return {}
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}


def resolve_config_path(path: str | Path) -> Path:
    """A config file, or the bundled experiment of that name (``RobNet_free_cifar10``)."""
    path = Path(path)
    if path.is_file():
        return path
    bundled = bundled_configs()
    if len(path.parts) == 1 and path.stem in bundled and path.suffix in ("", ".yaml"):
        return bundled[path.stem]
    hint = f"; or name a bundled experiment: {', '.join(sorted(bundled))}" if bundled else ""
    raise ConfigError(f"config file {path} not found{hint}")


def load_config_dict(path: str | Path) -> dict[str, Any]:
    """The nested dict of a YAML file or an original-style ``config.py`` (never executed)."""
    path = resolve_config_path(path)
    if path.suffix == ".py":
        return load_original_config_file(path)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"config {path} must be a .yaml/.yml file or an original-style config.py")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """'attack.steps=100' -> ('attack.steps', 100); values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. attack.steps=100)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if raw.strip().lower() in ("on", "off", "yes", "no", "y", "n"):
        return key, raw.strip()  # YAML 1.1 would read these as booleans; here they are words (e.g. sanity=off)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set dotted keys in a nested config dict (unknown keys are caught when the dataclass is built)."""
    for text in overrides:
        key, value = parse_override(text)
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return data


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), base: dict | None = None) -> Config:
    """Load a YAML or original config file (or only ``base`` values), apply overrides, validate."""
    path = resolve_config_path(path) if path is not None else None
    data = load_config_dict(path) if path is not None else {}
    if base:
        data = _merge(base, data)
    data = apply_overrides(data, overrides)
    config = build_dataclass(Config, data)
    if path is not None and "name" not in data:
        config.name = Path(path).parent.name if Path(path).stem == "config" else Path(path).stem
    return validate(config)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically); it loads back to an equal config."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)
    write_text_atomic(path, text)
    return Path(path)
