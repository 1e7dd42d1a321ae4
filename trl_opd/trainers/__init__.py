"""Trainers: thin subclasses of TRL's public trainers."""

from .gkd import GKDTrainer
from .gkd_config import GKDConfig


__all__ = ["GKDConfig", "GKDTrainer"]
