"""Typed experiment configuration. YAML files and the original ``config.py`` files both load into these."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    """Which network to build; ``None`` fields take the registered model's default."""

    name: str = "robnet_free"
    genotype: str | None = None  # canonical string; only for name 'robnet'
    C: int | None = None
    num_classes: int | None = None
    layers: int | None = None
    steps: int | None = None
    multiplier: int | None = None
    stem_multiplier: int | None = None
    share: bool | None = None
    adaptive_pool_size: int | None = None
    imagenet_stem: bool | None = None

    def model_kwargs(self) -> dict:
        """Constructor overrides for ``create_model(self.name, **kwargs)``."""
        skip = {"name"}
        return {k: v for k, v in self.__dict__.items() if k not in skip and v is not None}


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    root: str | None = None
    batch_size: int = 128
    num_workers: int = 2
    cutout: bool = False
    cutout_length: int = 16
    resize_size: int = 256
    input_size: int = 224


@dataclass
class AttackConfig:
    """The threat model and the PGD attack of the experiment (original ``attack_param``)."""

    enabled: bool = True
    norm: str = "Linf"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 20
    random_start: bool = True
    l2_eps: float = 0.5
    l2_step_size: float = 0.1


@dataclass
class TrainConfig:
    """Optimization recipe (original ``train_param``)."""

    lr: float = 1.2
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_wd: bool = True
    epochs: int = 150
    warmup_lr: float | None = None
    warmup_epochs: int = 0


@dataclass
class CheckpointConfig:
    """Weights to start from (original ``resume_path``)."""

    path: str | None = None
    original_format: bool = True


@dataclass
class EvalConfig:
    attacks: list[str] = field(default_factory=lambda: ["clean", "pgd20"])
    n: int | None = None
    batch_size: int | None = None
    precision: str = "fp32"
    device: str = "auto"
    attack_seed: int = 0
    execution: str = "fast"  # 'fast' (FastRobNet where it applies) or 'plain' (the original's execution)


@dataclass
class Config:
    name: str = "experiment"
    seed: int = 10
    report_freq: int = 10
    output_dir: str = "./log"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
