"""trl-opd: on-policy distillation for Hugging Face TRL.

Public names: :class:`GKDConfig` / :class:`GKDTrainer` (λ-mixed generalized KD), :class:`MiniLLMConfig` /
:class:`MiniLLMTrainer` (reverse KL as policy gradient), :class:`SPINConfig` / :class:`SPINTrainer` (self-play
rounds), the divergence library :mod:`trl_opd.divergences`, λ schedules :mod:`trl_opd.schedules`, and the hooks
:class:`TokenImportance`, :class:`PacedCurriculum`, :class:`FlawedPrefixFilter` (:mod:`trl_opd.hooks`).
"""

import importlib

from .divergences import chunked_per_token_divergence, per_token_divergence
from .hooks import FlawedPrefixFilter, PacedCurriculum, TokenImportance
from .schedules import LambdaSchedule


# The trainers import TRL (several seconds); they load on first use so that `trl-opd plan` and the math stay fast.
_LAZY = {name: ".trainers" for name in (
    "GKDConfig", "GKDTrainer", "MiniLLMConfig", "MiniLLMTrainer", "SPINConfig", "SPINTrainer"
)}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'trl_opd' has no attribute {name!r}")


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
