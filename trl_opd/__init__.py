"""trl-opd: on-policy distillation for Hugging Face TRL.

Public names: :class:`GKDConfig` / :class:`GKDTrainer` (λ-mixed generalized KD), :class:`MiniLLMConfig` /
:class:`MiniLLMTrainer` (reverse KL as policy gradient), :class:`SPINConfig` / :class:`SPINTrainer` (self-play
rounds), the divergence library :mod:`trl_opd.divergences`, λ schedules :mod:`trl_opd.schedules`, and the hooks
:class:`TokenImportance`, :class:`PacedCurriculum`, :class:`FlawedPrefixFilter` (:mod:`trl_opd.hooks`).
"""

from .divergences import chunked_per_token_divergence, per_token_divergence
from .hooks import FlawedPrefixFilter, PacedCurriculum, TokenImportance
from .schedules import LambdaSchedule
from .trainers import GKDConfig, GKDTrainer, MiniLLMConfig, MiniLLMTrainer, SPINConfig, SPINTrainer


__version__ = "0.1.0"

__all__ = [
    "FlawedPrefixFilter",
    "GKDConfig",
    "GKDTrainer",
    "LambdaSchedule",
    "MiniLLMConfig",
    "MiniLLMTrainer",
    "PacedCurriculum",
    "SPINConfig",
    "SPINTrainer",
    "TokenImportance",
    "chunked_per_token_divergence",
    "per_token_divergence",
]
