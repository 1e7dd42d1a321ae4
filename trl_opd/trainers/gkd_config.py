"""Configuration of :class:`trl_opd.GKDTrainer`: the engine's config with TRL's experimental ``GKDConfig`` defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..schedules import LambdaSchedule
from .distillation_config import DistillationConfig
from .trl_compat import SFTArguments


#: ``max_new_tokens`` when neither it nor ``max_completion_length`` is given (TRL's experimental ``GKDConfig``).
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass
class GKDConfig(SFTArguments, DistillationConfig):
    r"""
    Configuration class for [`GKDTrainer`]: a drop-in for `trl.experimental.gkd.GKDConfig`.

    The same fields and defaults as TRL's experimental `GKDConfig` (λ = 0.5 per-sample mixing, β = 0.5, sampling
    temperature 0.9 applied to sampling only, `max_new_tokens=128`, dropout disabled, its `SFTConfig` fields), on the
    engine of [`DistillationConfig`], every parameter of which applies (λ schedules, divergences, top-k, teacher cache,
    guards; all opt-in). The differences from TRL's are listed in docs/migrating.md.

    Parameters:
        > Parameters whose defaults differ from [`DistillationConfig`]

        lmbda (`float`, *optional*, defaults to `0.5`):
            Probability that a row is on-policy (the student samples it); the others use the dataset's completion. TRL
            flips one coin per micro-batch; this trainer flips one per row (same expected fraction).
        beta (`float`, *optional*, defaults to `0.5`):
            Generalized JSD interpolation: `0.0` forward KL, `1.0` reverse KL.
        temperature (`float`, *optional*, defaults to `0.9`):
            Sampling temperature of on-policy rows.
        loss_temperature (`float`, *optional*, defaults to `1.0`):
            Temperature of the logits in the loss: 1.0 as in TRL's experimental GKD (set `None` to use `temperature`).
        max_new_tokens (`int`, *optional*, defaults to `128`):
            Maximum number of tokens generated per completion; the same setting as `max_completion_length` (give
            either; they are kept equal; both given with different values are refused, unless `max_new_tokens` is
            left at 128). Off-policy completions are cut to it as well.
        learning_rate (`float`, *optional*, defaults to `2e-5`):
            As TRL's experimental `GKDConfig` (from `SFTConfig`); [`DistillationConfig`] defaults to `1e-6` as TRL's.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Disable dropout in the student.
        eval_lmbda (`float`, *optional*, defaults to `0.0`):
            λ during evaluation: the dataset's completions, as TRL's GKD evaluates (`1.0` scores the student's own
            samples, as [`DistillationConfig`] does).

        > Parameters kept from TRL's experimental `GKDConfig` (its `SFTConfig` fields)

        `max_length`, and the dataset-preparation fields: see [`trl_opd.trainers.trl_compat.SFTArguments`].
    """

    learning_rate: float = field(default=2e-5, metadata={"help": "The initial learning rate for AdamW."})
    lmbda: float = field(
        default=LambdaSchedule.lmbda, metadata={"help": "Probability that a row is on-policy (constant schedule)."}
    )
    beta: float = field(default=0.5, metadata={"help": "Generalized JSD interpolation: 0 = FKL, 1 = RKL, 0.5 = JSD."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature of on-policy rows."})
    loss_temperature: float | None = field(
        default=1.0, metadata={"help": "Temperature of the logits in the loss (None: the sampling temperature)."}
    )
    max_new_tokens: int = field(
        default=DEFAULT_MAX_NEW_TOKENS, metadata={"help": "Max tokens per completion (same as max_completion_length)."}
    )
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Max tokens per completion (default: max_new_tokens)."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the student."})
    eval_lmbda: float = field(default=0.0, metadata={"help": "λ during evaluation (0: the dataset's completions)."})

    def __post_init__(self):
        if self.max_completion_length is None:
            self.max_completion_length = self.max_new_tokens
        elif self.max_new_tokens == DEFAULT_MAX_NEW_TOKENS:  # left at its default: max_completion_length was given
            self.max_new_tokens = self.max_completion_length
        elif self.max_new_tokens != self.max_completion_length:
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens} and max_completion_length={self.max_completion_length} are the "
                "same setting (tokens generated per completion); give one of them."
            )
        super().__post_init__()
