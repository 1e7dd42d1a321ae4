"""Configuration of :class:`trl_opd.SPINTrainer`: TRL's ``DPOConfig`` plus the self-play rounds and their stop rule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import DPOConfig

from ..guard import FiniteGuardArguments
from ..vllm_rollouts import OwnVLLMArguments


SPIN_LOSS_TYPES = ("sigmoid", "hinge")


@dataclass
class SPINConfig(FiniteGuardArguments, OwnVLLMArguments, DPOConfig):
    r"""
    Configuration class for [`SPINTrainer`]: self-play fine-tuning (SPIN) as rounds of DPO.

    Extends [`trl.DPOConfig`]; every DPO and `TrainingArguments` parameter applies **to each round**: `max_steps` /
    `num_train_epochs`, `learning_rate`, batch sizes, `beta`, logging and checkpointing are per round. In round k the
    previous iterate θ_{k-1} is the frozen reference, the current model samples the "rejected" completions, the
    dataset completion (or `chosen_model`'s output) is "chosen", and one DPO run turns θ_{k-1} into θ_k.

    Parameters:
        > Parameters that control the rounds

        max_rounds (`int`, *optional*, defaults to `3`):
            Largest number of rounds; fewer are run when the saturation check stops the loop. Each round is saved in
            `output_dir/round-{k}` and its metrics appended to `output_dir/rounds.json`.
        prompts_per_round (`int`, *optional*):
            Number of dataset prompts drawn (without replacement, a fresh draw seeded by `seed` and the round) to make
            each round's pairs. `None` uses every prompt in every round, as in the SPIN paper.

        > Parameters that control generation

        max_prompt_length (`int`, *optional*):
            Prompts of more tokens (as `DPOTrainer` tokenizes them) are dropped from the dataset when the trainer is
            built, with a logged count. `None` keeps every prompt; a prompt too long for the model (its tokens plus
            `max_completion_length` beyond the model's maximum positions) or for DPO (at least `max_length` tokens) is
            then refused with an error that names this option.
        max_completion_length (`int`, *optional*, defaults to `128`):
            Largest number of new tokens sampled for a "rejected" completion, a saturation sample or a `chosen_model`
            output. A completion cut at this length has no end-of-sequence token of its own; DPO's tokenization adds
            one (the chat template's end of turn, or `eos_token` for text).
        generation_temperature (`float`, *optional*, defaults to `1.0`):
            Temperature of the "rejected" samples (plain sampling, no top-k / top-p). `1.0` samples the model's own
            distribution, which is what SPIN contrasts with the data.
        chosen_temperature (`float`, *optional*, defaults to `0.0`):
            With a `chosen_model`: `0.0` takes its greedy output as "chosen" (generated once, reused every round),
            `> 0` samples it afresh each round at this temperature.
        generation_batch_size (`int`, *optional*, defaults to `16`):
            Prompts per `generate` call (a memory knob, it does not change the samples' distribution).
        use_vllm (`bool`, *optional*, defaults to `False`):
            Sample the "rejected" completions with a colocated vLLM engine (started once, weights synced before each
            round's sampling); `vllm_mode`, `vllm_gpu_memory_utilization`, `vllm_max_model_length`,
            `vllm_enable_sleep_mode` and `vllm_dtype` configure it
            ([`trl_opd.trainers.vllm_rollouts.OwnVLLMArguments`]).
            The saturation samples and `chosen_model` still use `generate`.

        > Parameters that control the saturation check

        saturation_kl (`float`, *optional*, defaults to `0.01`):
            After each round, completions are sampled afresh from θ_k (temperature 1) and KL(θ_k ‖ θ_{k-1}) is
            estimated on them in nats per sequence (Σ_t of the exact per-token KL along each sample, averaged over
            samples). The check passes when it is below this value. `None` disables it.
        saturation_margin (`float`, *optional*, defaults to `0.01`):
            The check passes when the mean DPO reward margin of θ_k over θ_{k-1} on the round's own pairs,
            β · mean[(log π_k(c) − log π_{k-1}(c)) − (log π_k(r) − log π_{k-1}(r))], is below this value: the model
            no longer separates the data from its own samples. `None` disables it.
        num_saturation_samples (`int`, *optional*, defaults to `16`):
            Number of fresh samples (prompts drawn from the dataset) for the KL estimate. `0` skips the estimate,
            which needs `saturation_kl=None`.

        The loop stops after round k ("saturated") when **every** enabled check passes, otherwise after
        `max_rounds` ("max_rounds"). With both disabled every round runs.

        > Parameters that control the loss

        loss_type (`list[str]`, *optional*, defaults to `["sigmoid"]`):
            `"sigmoid"`: SPIN's logistic loss −log σ(h) (the DPO loss); `"hinge"`: max(0, 1 − h), the hinge variant
            of the SPIN paper; with h = β · [(log π_θ(c) − log π_ref(c)) − (log π_θ(r) − log π_ref(r))]. Exactly one
            of them.
        beta (`float`, *optional*, defaults to `0.1`):
            β of h (the SPIN paper's λ): larger values keep θ_k closer to θ_{k-1}.

    > [!NOTE]
    > As in TRL, `bf16` defaults to `True`, `gradient_checkpointing` to `True` and `learning_rate` to `1e-6`; on CPU
    > set `bf16=False` and `use_cpu=True`. `sync_ref_model` is refused: in SPIN the reference is fixed within a round
    > and replaced between rounds.
    """

    max_rounds: int = field(default=3, metadata={"help": "Largest number of self-play rounds."})
    prompts_per_round: int | None = field(
        default=None, metadata={"help": "Prompts drawn per round to make pairs (default: every prompt)."}
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Drop prompts of more tokens (logged count); default: keep every prompt."}
    )
    max_completion_length: int = field(
        default=128, metadata={"help": "Largest number of new tokens of a generated completion."}
    )
    generation_temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of the 'rejected' completions."}
    )
    chosen_temperature: float = field(
        default=0.0, metadata={"help": "chosen_model sampling temperature; 0 = greedy (generated once)."}
    )
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per generate call."})
    saturation_kl: float | None = field(
        default=0.01, metadata={"help": "Saturated when KL(θ_k ‖ θ_{k-1}) on fresh samples (nats/sequence) < this."}
    )
    saturation_margin: float | None = field(
        default=0.01, metadata={"help": "Saturated when the mean DPO reward margin on the round's pairs < this."}
    )
    num_saturation_samples: int = field(
        default=16, metadata={"help": "Fresh samples for the KL(θ_k ‖ θ_{k-1}) estimate (0: skip it)."}
    )

    def __post_init__(self):
        super().__post_init__()  # turns a single loss_type string into a list
        if len(self.loss_type) != 1 or self.loss_type[0] not in SPIN_LOSS_TYPES:
            raise ValueError(
                f"SPIN trains one loss: loss_type must be one of {', '.join(map(repr, SPIN_LOSS_TYPES))}, "
                f"got {self.loss_type}."
            )
        if self.f_divergence_type != "reverse_kl":
            raise ValueError(
                "SPIN's rewards are the log-ratios of standard DPO: f_divergence_type must be 'reverse_kl', "
                f"got {self.f_divergence_type!r}."
            )
        if self.sync_ref_model:
            raise ValueError(
                "sync_ref_model=True moves the reference during a round; in SPIN the reference is the previous "
                "iterate, fixed for the whole round. Set sync_ref_model=False."
            )
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}.")
        if self.prompts_per_round is not None and self.prompts_per_round < 1:
            raise ValueError(f"prompts_per_round must be >= 1 or None (every prompt), got {self.prompts_per_round}.")
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {self.max_completion_length}.")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1 or None (no limit), got {self.max_prompt_length}.")
        if not (math.isfinite(self.generation_temperature) and self.generation_temperature > 0):
            raise ValueError(
                f"generation_temperature must be > 0 and finite (1.0 samples the model's own distribution), got "
                f"{self.generation_temperature}."
            )
        if not (math.isfinite(self.chosen_temperature) and self.chosen_temperature >= 0):
            raise ValueError(f"chosen_temperature must be >= 0 and finite (0 = greedy), got {self.chosen_temperature}.")
        if self.generation_batch_size < 1:
            raise ValueError(f"generation_batch_size must be >= 1, got {self.generation_batch_size}.")
        if self.num_saturation_samples < 0:
            raise ValueError(f"num_saturation_samples must be >= 0, got {self.num_saturation_samples}.")
        if self.saturation_kl is not None:
            if not self.saturation_kl > 0:
                raise ValueError(f"saturation_kl must be > 0 or None (check off), got {self.saturation_kl}.")
            if self.num_saturation_samples == 0:
                raise ValueError(
                    "saturation_kl needs fresh samples to estimate KL(θ_k ‖ θ_{k-1}): set num_saturation_samples >= 1 "
                    "or saturation_kl=None."
                )
