"""trl-opd: on-policy distillation for Hugging Face TRL.

Public names: :class:`DistillationConfig` / :class:`DistillationTrainer` (the drop-in for ``trl.DistillationTrainer``:
on-policy by default, λ-mixing and the rest opt-in), :class:`GKDConfig` / :class:`GKDTrainer` (the same engine as the
drop-in for TRL's experimental ``GKDTrainer``), :class:`MiniLLMConfig` /
:class:`MiniLLMTrainer` (reverse KL as policy gradient), :class:`SPINConfig` / :class:`SPINTrainer` (self-play
rounds), the divergence library :mod:`trl_opd.divergences`, λ schedules :mod:`trl_opd.schedules`, and the hooks
:class:`TokenImportance`, :class:`PacedCurriculum`, :class:`FlawedPrefixFilter` (:mod:`trl_opd.hooks`).

Every name loads on first use: ``import trl_opd`` imports neither torch, transformers nor TRL (importing TRL takes
several seconds), so ``trl-opd plan`` and ``--help`` answer at once.
"""

import importlib


_LAZY = {
    **dict.fromkeys(
        (
            "DistillationConfig",
            "DistillationTrainer",
            "GKDConfig",
            "GKDTrainer",
            "MiniLLMConfig",
            "MiniLLMTrainer",
            "SPINConfig",
            "SPINTrainer",
        ),
        ".trainers",
    ),
    **dict.fromkeys(("FlawedPrefixFilter", "PacedCurriculum", "TokenImportance"), ".hooks"),
    **dict.fromkeys(("chunked_per_token_divergence", "per_token_divergence"), ".divergences"),
    "LambdaSchedule": ".schedules",
    **dict.fromkeys(("Teacher", "TeacherCache", "build_teacher_cache"), ".teachers"),
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'trl_opd' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


__version__ = "0.1.0"

__all__ = sorted(_LAZY)
