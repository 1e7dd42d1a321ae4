"""Trainers: thin subclasses of TRL's public trainers."""

from .distillation import DistillationTrainer
from .distillation_config import DistillationConfig
from .gkd import GKDTrainer
from .gkd_config import GKDConfig
from .minillm import MiniLLMTrainer
from .minillm_config import MiniLLMConfig
from .spin import SPINConfig, SPINTrainer


__all__ = [
    "DistillationConfig",
    "DistillationTrainer",
    "GKDConfig",
    "GKDTrainer",
    "MiniLLMConfig",
    "MiniLLMTrainer",
    "SPINConfig",
    "SPINTrainer",
]
