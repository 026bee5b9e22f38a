"""Adversarial training: the original RobNets recipe (PGD-7, SGD, warm-up + cosine, no decay on BN/bias),
fast single-step methods (FGSM-RS, N-FGSM), TRADES, bf16, a device-resident CIFAR pipeline, EMA, robust
validation with best-checkpoint keeping, exact resume, and DDP under torchrun or slurm."""

from ..distributed import DistContext, detect_environment, init_distributed
from .ema import ModelEMA
from .methods import METHODS, MethodSettings, make_inputs, training_loss
from .schedule import build_optimizer, learning_rate, no_weight_decay_groups, scaled_lr

__all__ = ["DistContext", "METHODS", "MethodSettings", "ModelEMA", "build_optimizer", "detect_environment",
           "init_distributed", "learning_rate", "make_inputs", "no_weight_decay_groups", "scaled_lr",
           "training_loss"]
