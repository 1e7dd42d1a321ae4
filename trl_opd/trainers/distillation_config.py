"""Configuration of :class:`trl_opd.DistillationTrainer`: TRL's ``DistillationConfig`` plus λ-mixing and the rest of the
engine (divergence, schedule, teacher, prompts, guard), with TRL's defaults: on-policy (λ = 1), β = 1."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import DistillationConfig as TRLDistillationConfig

from ..divergences import DIVERGENCES, check_divergence, reverse_kl_share
from ..schedules import CONFIG_FIELDS, LMBDA_SCHEDULES, LambdaSchedule
from .guard import FiniteGuardArguments
from .privileged import PrivilegedArguments
from .prompts import PromptArguments
from .teacher_args import TeacherArguments
from .vllm_rollouts import VLLMArguments


@dataclass
class DistillationConfig(
    PrivilegedArguments, TeacherArguments, PromptArguments, FiniteGuardArguments, VLLMArguments, TRLDistillationConfig
):
    r"""
    Configuration class for [`DistillationTrainer`]: on-policy distillation, with per-sample λ-mixing as an option.

    A drop-in for [`trl.DistillationConfig`]: same field names and defaults (on-policy, `beta=1.0`, `temperature=1.0`
    on sampling and loss), all of whose parameters apply (generation, vLLM, logging, ...). Each training row is
    *on-policy* (the student samples its completion) with probability λ, otherwise *off-policy* (the dataset's
    completion, or the teacher's own generation with `seq_kd=True`). λ follows `lmbda_schedule` over training; the
    default λ = 1 needs only a `prompt` column. [`trl_opd.GKDConfig`] is this config with the defaults of TRL's
    experimental `GKDConfig`.

    Parameters:
        > Parameters that control the sampling mixture

        lmbda (`float`, *optional*, defaults to `1.0`):
            Probability that a row is on-policy, for `lmbda_schedule="constant"`. `0.0` is pure off-policy
            (supervised KD), `1.0` pure on-policy (then the dataset needs no `completion` column).
        lmbda_schedule (`str`, *optional*, defaults to `"constant"`):
            How λ evolves with progress s = step / max_steps: `"constant"` (λ = `lmbda`), `"linear"` (from
            `lmbda_start` to `lmbda_end`), or `"three_phase"` (λ = 0 for the first `lmbda_warmup_fraction` of training,
            a linear ramp from `lmbda_start` to `lmbda_end` over the next `lmbda_mixed_fraction`, then λ = 1).
        lmbda_start (`float`, *optional*):
            Start of the linear ramp. Defaults to `0.0` for `"linear"` and `0.3` for `"three_phase"`.
        lmbda_end (`float`, *optional*):
            End of the linear ramp. Defaults to `1.0` for `"linear"` and `0.7` for `"three_phase"`.
        lmbda_warmup_fraction (`float`, *optional*, defaults to `0.2`):
            Fraction of training spent off-policy (λ = 0) by `"three_phase"`.
        lmbda_mixed_fraction (`float`, *optional*, defaults to `0.4`):
            Fraction of training spent on the mixed ramp by `"three_phase"`; the rest is on-policy (λ = 1).
        seq_kd (`bool`, *optional*, defaults to `False`):
            Off-policy rows use a completion sampled from the teacher (sequence-level KD) instead of the dataset's.
        mixing_seed (`int`, *optional*):
            Seed of the per-row coin flips. Defaults to `seed`. The flips for a step depend only on this seed and the
            global step, so every process draws the same global assignment and takes its own slice.

        > Parameters that control the loss

        divergence (`str`, *optional*, defaults to `"jsd"`):
            Per-token divergence between teacher and student: `"fkl"` (KL(teacher‖student)), `"rkl"`
            (KL(student‖teacher)), `"jsd"` (generalized JSD with `beta`, TRL's convention) or `"tvd"` (total
            variation).
        beta (`float`, *optional*, defaults to `1.0`):
            Interpolation of the generalized JSD, as in TRL: `0.0` forward KL, `1.0` reverse KL, `0.5` symmetric JSD.
            Only used with `divergence="jsd"` (TRL's `DistillationConfig` default, reverse KL).
        temperature (`float`, *optional*, defaults to `1.0`):
            Applied to on-policy sampling and, unless `loss_temperature` is set, to both models' logits in the loss
            (like `trl.DistillationTrainer`).
        loss_temperature (`float`, *optional*):
            Temperature of both models' logits in the loss when it should differ from the sampling `temperature`.
            `None` uses `temperature` (TRL's `DistillationTrainer`); [`trl_opd.GKDConfig`] sets `1.0` (TRL's
            experimental `GKDTrainer` tempers sampling only).
        eval_lmbda (`float`, *optional*, defaults to `1.0`):
            λ used during evaluation. The default scores the student on its own samples: the eval loss is then the
            divergence to the teacher on the student's own distribution.

        > Parameters shared by trl-opd's trainers (documented where they are defined)

        `compatibility_check`, `teacher_top_k`, `teacher_cache` ([`trl_opd.trainers.teacher_args.TeacherArguments`]),
        `privileged_teacher`, `privileged_ema_rate`, `privileged_template`
        ([`trl_opd.trainers.privileged.PrivilegedArguments`]),
        `max_prompt_length` ([`trl_opd.trainers.prompts.PromptArguments`]), `nonfinite_policy`, `max_nonfinite_skips`
        ([`trl_opd.trainers.guard.FiniteGuardArguments`]).

    > [!NOTE]
    > As in TRL, `bf16` defaults to `True` and `gradient_checkpointing` to `True`; on CPU set `bf16=False` and
    > `use_cpu=True`.
    """

    # The schedule's defaults are LambdaSchedule's own (its class attributes), so they are written once; λ itself
    # defaults to 1.0 here (on-policy, trl.DistillationConfig) and to LambdaSchedule.lmbda in GKDConfig.
    lmbda: float = field(default=1.0, metadata={"help": "Probability that a row is on-policy (constant schedule)."})
    lmbda_schedule: str = field(
        default=LambdaSchedule.kind, metadata={"help": f"λ schedule: one of {', '.join(LMBDA_SCHEDULES)}."}
    )
    lmbda_start: float | None = field(
        default=LambdaSchedule.start, metadata={"help": "Start of the λ ramp (linear / three_phase)."}
    )
    lmbda_end: float | None = field(
        default=LambdaSchedule.end, metadata={"help": "End of the λ ramp (linear / three_phase)."}
    )
    lmbda_warmup_fraction: float = field(
        default=LambdaSchedule.warmup_fraction, metadata={"help": "three_phase: off-policy fraction."}
    )
    lmbda_mixed_fraction: float = field(
        default=LambdaSchedule.mixed_fraction, metadata={"help": "three_phase: mixed-ramp fraction."}
    )
    seq_kd: bool = field(default=False, metadata={"help": "Off-policy rows use the teacher's generation."})
    mixing_seed: int | None = field(default=None, metadata={"help": "Seed of the per-row coin flips (default: seed)."})
    divergence: str = field(default="jsd", metadata={"help": f"Per-token divergence: one of {', '.join(DIVERGENCES)}."})
    beta: float = field(default=1.0, metadata={"help": "Generalized JSD interpolation: 0 = FKL, 1 = RKL, 0.5 = JSD."})
    loss_temperature: float | None = field(
        default=None, metadata={"help": "Temperature of the logits in the loss (default: the sampling temperature)."}
    )
    eval_lmbda: float = field(default=1.0, metadata={"help": "λ during evaluation (1.0: the student's own samples)."})

    def __post_init__(self):
        super().__post_init__()
        check_divergence(self.divergence, self.beta)
        self.warn_if_top_k_is_unsafe(self.teacher_top_k)
        if self.loss_temperature is not None and not (
            math.isfinite(self.loss_temperature) and self.loss_temperature > 0
        ):
            raise ValueError(
                f"loss_temperature must be a finite number > 0 or None (the sampling temperature), got "
                f"{self.loss_temperature}."
            )
        if not 0.0 <= self.eval_lmbda <= 1.0:
            raise ValueError(f"eval_lmbda must be in [0, 1], got {self.eval_lmbda}.")
        self._lambda_schedule = None
        self.lambda_schedule()  # validates the schedule fields with messages naming the allowed values
        if self.mixing_seed is None:
            self.mixing_seed = self.seed

    def lambda_schedule(self) -> LambdaSchedule:
        """The :class:`~trl_opd.schedules.LambdaSchedule` these fields describe, built when the config is and kept
        (built again only if one of the ``lmbda*`` fields was assigned since)."""
        fields_now = {name: getattr(self, name) for name in CONFIG_FIELDS.values()}
        if self._lambda_schedule is None or self._lambda_schedule[0] != fields_now:
            self._lambda_schedule = (fields_now, LambdaSchedule.from_config(fields_now))
        return self._lambda_schedule[1]

    def top_k_objective(self) -> tuple[float, str]:
        return reverse_kl_share(self.divergence, self.beta), f"divergence={self.divergence!r}"

    @property
    def needs_dataset_completions(self) -> bool:
        """False when no row ever uses the dataset's completion: λ ≡ 1, or off-policy rows come from the teacher."""
        return not (self.lambda_schedule().always_on_policy or self.seq_kd)
