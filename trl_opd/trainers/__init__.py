"""Trainers: thin subclasses of TRL's public trainers."""

from .gkd import GKDTrainer
from .gkd_config import GKDConfig
from .minillm import MiniLLMTrainer
from .minillm_config import MiniLLMConfig
from .spin import SPINConfig, SPINTrainer


__all__ = ["GKDConfig", "GKDTrainer", "MiniLLMConfig", "MiniLLMTrainer", "SPINConfig", "SPINTrainer"]
