"""Configuration of :class:`trl_opd.MiniLLMTrainer`: TRL's ``GRPOConfig`` plus the teacher reward and extrapolation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from ..divergences import reverse_kl_share
from .guard import FiniteGuardArguments
from .privileged import PrivilegedArguments
from .prompts import PromptArguments
from .teacher_args import TeacherArguments
from .vllm_rollouts import VLLMArguments


BASELINES = ("mean", "none")


@dataclass
class MiniLLMConfig(
    PrivilegedArguments, TeacherArguments, PromptArguments, FiniteGuardArguments, VLLMArguments, GRPOConfig
):
    r"""
    Configuration class for [`MiniLLMTrainer`]: reverse-KL distillation as policy gradient, with reward extrapolation.

    Extends [`trl.GRPOConfig`]: generation (`num_generations`, `max_completion_length`, `temperature`, vLLM), the
    clipped policy-gradient loss (`epsilon`, `num_iterations` for several updates per batch, `loss_type`), the entropy
    bonus (`entropy_coef`) and the verifiers (`reward_funcs`, `reward_weights`) all apply. GRPO's group-normalised
    advantages are replaced by MiniLLM's per-token ones below, and GRPO's `beta` (a KL penalty to a reference) stays
    at its default of 0.

    Parameters:
        > Parameters that control the teacher reward

        teacher_model_init_kwargs (`dict`, *optional*):
            Keyword arguments for `from_pretrained` when the teacher is given as a path.
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount γ of the reward-to-go `A_t = Σ_{s≥t} γ^{s−t} r_s`.
        length_normalization (`bool`, *optional*, defaults to `True`):
            Divide each reward-to-go by the number of tokens it sums (MiniLLM's length normalisation: long
            continuations do not dominate). Trades a little bias for lower variance; `False` is the unbiased
            estimator of the reverse-KL gradient.
        baseline (`str`, *optional*, defaults to `"mean"`):
            `"mean"` subtracts the mean advantage over the batch's completion tokens (all processes); `"none"` keeps
            the raw rewards-to-go.
        whiten_advantages (`bool`, *optional*, defaults to `False`):
            Also divide by the standard deviation of the advantages over the batch's tokens.
        single_step (`bool`, *optional*, defaults to `False`):
            MiniLLM's single-step decomposition: the current token's term is replaced by the exact reverse KL over the
            whole vocabulary at each sampled prefix (computed with the chunked divergence, differentiated directly),
            and the policy-gradient rewards-to-go start at the next token. Costs one extra student forward pass.
        single_step_coef (`float`, *optional*, defaults to `1.0`):
            Weight of that exact term.
        teacher_mix_alpha (`float`, *optional*, defaults to `0.0`):
            Sample training rollouts from `α·p_T + (1 − α)·p_θ` (MiniLLM's teacher-mixed sampling), correcting with
            per-token importance weights `p_θ(y_t) / p_mix(y_t)`. `0` samples from the student alone.
        importance_weight_clip (`float`, *optional*, defaults to `3.0`):
            Upper clip of those importance weights.

        > Parameters that control reward extrapolation

        external_reward_coef (`float`, *optional*, defaults to `1.0`):
            β in `R = log P_T + β · R_ext`: the weighted sum of the `reward_funcs` (verifiers) is added at the last
            token of each completion, times β.
        extrapolation_lambda (`float`, *optional*, defaults to `1.0`):
            ExOPD / G-OPD: the per-token reward becomes `λ·(log p_T − log π_ref) − (log p_θ − log π_ref)`, where π_ref
            is the student's base model (with PEFT: the same weights with the adapter disabled, no copy) or the
            `ref_model` given to the trainer. `λ = 1` is plain reverse KL; `λ > 1` extrapolates past the teacher.
        > Parameters shared by trl-opd's trainers (documented where they are defined)

        `compatibility_check`, `teacher_top_k`, `teacher_cache` ([`trl_opd.trainers.teacher_args.TeacherArguments`]),
        `max_prompt_length` ([`trl_opd.trainers.prompts.PromptArguments`]), `nonfinite_policy`, `max_nonfinite_skips`
        ([`trl_opd.trainers.guard.FiniteGuardArguments`]).

    """

    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "from_pretrained kwargs of the teacher when given as a path."}
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount of the reward-to-go."})
    length_normalization: bool = field(default=True, metadata={"help": "Divide rewards-to-go by their length."})
    baseline: str = field(default="mean", metadata={"help": f"Advantage baseline: one of {', '.join(BASELINES)}."})
    whiten_advantages: bool = field(default=False, metadata={"help": "Divide advantages by their std."})
    single_step: bool = field(default=False, metadata={"help": "Exact reverse KL at each prefix (MiniLLM)."})
    single_step_coef: float = field(default=1.0, metadata={"help": "Weight of the single-step term."})
    teacher_mix_alpha: float = field(default=0.0, metadata={"help": "Teacher share of the sampling mixture."})
    importance_weight_clip: float = field(default=3.0, metadata={"help": "Clip of the mixture importance weights."})
    external_reward_coef: float = field(default=1.0, metadata={"help": "β of R = log P_T + β·R_ext."})
    extrapolation_lambda: float = field(default=1.0, metadata={"help": "ExOPD λ over the reference model."})

    def top_k_objective(self) -> tuple[float, str]:
        # Only the single-step term sees the teacher's top-k bins: it is an exact reverse KL at each prefix.
        return reverse_kl_share("rkl") if self.single_step else 0.0, "MiniLLM's single-step term (a reverse KL)"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.teacher_model_init_kwargs, str):
            import json

            self.teacher_model_init_kwargs = json.loads(self.teacher_model_init_kwargs)
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}.")
        if self.baseline not in BASELINES:
            raise ValueError(f"Unknown baseline {self.baseline!r}; choose one of {', '.join(map(repr, BASELINES))}.")
        if not 0.0 <= self.teacher_mix_alpha < 1.0:
            raise ValueError(f"teacher_mix_alpha must be in [0, 1), got {self.teacher_mix_alpha}.")
        if not self.importance_weight_clip >= 1.0:
            raise ValueError(f"importance_weight_clip must be >= 1, got {self.importance_weight_clip}.")
        for name in ("external_reward_coef", "extrapolation_lambda", "single_step_coef"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}.")
        if self.extrapolation_lambda < 0:
            raise ValueError(
                f"extrapolation_lambda must be >= 0 (1 = plain reverse KL), got {self.extrapolation_lambda}."
            )
        self.warn_if_top_k_is_unsafe(self.teacher_top_k)
        if self.teacher_cache is not None:
            raise ValueError(
                "MiniLLM trains on the student's own samples only, so a teacher cache (of dataset completions) has "
                "nothing to serve; use it with GKDTrainer (lmbda < 1)."
            )
        if self.beta != 0.0:
            raise ValueError(
                "MiniLLMConfig.beta (GRPO's KL penalty to a reference) must stay 0: the reverse KL to the teacher is "
                "already the reward. Use extrapolation_lambda for a reference-model term."
            )
