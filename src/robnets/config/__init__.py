"""Experiment configuration: typed dataclasses, YAML files, original RobNets ``config.py`` files (parsed,
never executed), dotted command-line overrides, and the resolved config saved with every run."""

from .build import build_model
from .loader import apply_overrides, build_dataclass, config_to_dict, load_config, load_config_dict, save_config
from .original import evaluate_expression, parse_original_config
from .schema import (AttackConfig, CheckpointConfig, Config, DataConfig, EvalConfig, ModelConfig, SearchConfig,
                     TrainConfig)

__all__ = ["AttackConfig", "CheckpointConfig", "Config", "DataConfig", "EvalConfig", "ModelConfig",
           "SearchConfig", "TrainConfig", "apply_overrides", "build_dataclass", "build_model", "config_to_dict", "evaluate_expression",
           "load_config", "load_config_dict", "parse_original_config", "save_config"]
