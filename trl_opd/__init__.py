"""trl-opd: on-policy distillation for Hugging Face TRL.

Public names: :class:`GKDConfig` / :class:`GKDTrainer` (λ-mixed generalized KD), the divergence library
:mod:`trl_opd.divergences`, λ schedules :mod:`trl_opd.schedules`.
"""

from .divergences import chunked_per_token_divergence, per_token_divergence
from .schedules import LambdaSchedule
from .trainers import GKDConfig, GKDTrainer


__version__ = "0.1.0"

__all__ = [
    "GKDConfig",
    "GKDTrainer",
    "LambdaSchedule",
    "chunked_per_token_divergence",
    "per_token_divergence",
]
