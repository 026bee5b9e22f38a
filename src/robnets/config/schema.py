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
    eot_iter: int = 1  # >1: average gradients over several forward passes (randomized models)


@dataclass
class TrainConfig:
    """Optimization recipe (original ``train_param``)."""

    lr: float = 1.2
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_wd: bool = True
    epochs: int = 150  # after the warm-up: the run lasts warmup_epochs + epochs, as in the original
    warmup_lr: float | None = None
    warmup_epochs: int = 0
    method: str = "pgd"  # pgd | fgsm_rs | nfgsm | trades | standard
    attack_steps: int = 7  # PGD / TRADES inner steps (the original trains with PGD-7)
    fgsm_step: float = 1.25  # FGSM-RS step, in units of eps
    nfgsm_noise: float = 2.0  # N-FGSM noise radius, in units of eps
    nfgsm_step: float = 1.0  # N-FGSM step, in units of eps
    trades_beta: float = 6.0
    attack_train_mode: bool = False  # True: attack with BatchNorm in train mode, like the original
    fast_attack: bool = True  # craft training attacks with the fast (eval-mode) engine
    # torch.compile that engine (where it applies) and the weight update's forward/backward (CUDA, after a few
    # minutes of compiling; docs/performance.md)
    compile: bool = False
    batch_size: int | None = None  # per process and micro-batch; default data.batch_size
    accumulate: int = 1  # micro-batches per optimizer step (one GPU emulating a larger global batch)
    reference_batch_size: int = 1536  # the batch the rates above were tuned for (linear scaling)
    scale_lr: bool = True
    lr_per_step: bool = False  # evaluate the schedule at fractional epochs
    precision: str = "fp32"  # or bf16 autocast
    ema_decay: float | None = None
    train_size: int | None = None  # use only the first N training images (quick runs)
    val_size: int = 1000  # held out from the end of the training set for robust validation
    val_every: int = 1
    val_attack_steps: int = 10
    co_drop: float = 0.2  # PGD accuracy drop (absolute, on a training batch) flagged as catastrophic overfitting
    co_probe_size: int = 256  # training images of that probe (PGD-10 after each epoch); 0 turns it off
    stop_on_co: bool = False
    checkpoint_every_steps: int = 0  # 0: resume checkpoints at epoch ends (and on interruption)
    max_steps: int | None = None  # stop (with a resume checkpoint) after this many steps of this process
    save_dtype: str = "fp32"  # final weights: fp32 or fp16
    tensorboard: bool = False
    device: str = "auto"


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
    # points per block: every attack restarts its random stream at each block and AutoAttack runs its cascade
    # within it, so results do not depend on how the run is sharded (shards are whole blocks)
    block_size: int = 1000
    execution: str = "fast"  # 'fast' (FastRobNet where it applies) or 'plain' (the original's execution)
    compile: bool = False  # torch.compile the fast path (CUDA: 1.46x faster PGD, after 1-2 min compiling)
    sanity: str = "quick"  # off | quick | full: checks written into every result
    sanity_n: int = 64  # examples the sanity checks use
    autoattack_version: str = "standard"  # standard | plus | rand
    eps_sweep_255: list[float] = field(default_factory=list)  # PGD accuracy at these eps (units of 1/255)
    sweep_steps: int = 20
    transfer_checkpoint: str | None = None  # craft attacks on this model, score them on the evaluated one
    transfer_model: str | None = None  # its registered name (not needed for this project's safetensors)


@dataclass
class SearchConfig:
    """Architecture search (``robnets search``): supernet, sampling, fine-tuning, scoring, FSP filter."""

    C: int = 16  # supernet / candidate width
    layers: int = 8
    steps: int = 4
    share: bool = True  # True: cell-based space (one cell for all layers); False: cell-free (one per layer)
    # one-shot supernet training: a random architecture per batch
    supernet_epochs: int = 1
    supernet_max_steps: int | None = None  # cap on supernet steps (quick runs)
    supernet_lr: float = 0.1
    method: str = "fgsm_rs"  # adversarial training method of supernet and fine-tuning (see train.method)
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    precision: str = "fp32"
    checkpoint_every_steps: int = 200
    # a trained supernet.safetensors (of another search with the same macro structure) to inherit instead of
    # training one; copied into the run folder, so one supernet can serve several candidate samplings
    supernet_weights: str | None = None
    # candidates
    num_samples: int = 64
    sampling: str = "uniform"  # uniform | density | budget
    density_min: float = 0.0
    density_max: float = 1.0
    conv_budget: int | None = None  # convolutions per cell for sampling 'budget'
    # draw only fully live cells (every node computes from the inputs and is used, both inputs read); the
    # supernet is trained on the same distribution the candidates are drawn from
    live_only: bool = True
    bn_recalibration_batches: int = 8  # training batches re-estimating BatchNorm statistics of a subnetwork
    finetune_steps: int = 100
    finetune_lr: float = 0.02
    finetune_seed: int = 0  # another value draws other fine-tuning batches and noise (re-scoring: noise floor)
    eval_size: int = 500  # held-out images scoring each candidate (clean and PGD)
    eval_attack_steps: int = 10
    # FSP analysis and filter (cell-free search rejects high-FSP-loss samples before fine-tuning)
    fsp: bool = True
    fsp_size: int = 64  # images for FSP losses
    fsp_filter: bool = False
    fsp_keep: float = 0.5  # fraction kept by the filter when no threshold is given
    fsp_threshold: float | None = None  # reject candidates whose inherited deep-cell FSP loss exceeds this
    # (the filter ranks the relative loss, ||G(x) - G(x_adv)||^2 / ||G(x)||^2, comparable across widths)
    # data
    train_size: int | None = None  # use only the first N training images
    val_size: int = 1000  # held out from the end of the training set (candidates are scored on it)
    device: str = "auto"
    stop_after: int | None = None  # score at most this many candidates in this process, then stop (resumable)


@dataclass
class Config:
    name: str = "experiment"
    seed: int = 10
    report_freq: int = 10
    output_dir: str = "./runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
