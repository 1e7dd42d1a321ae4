"""The distillation engine: on-policy distillation with per-sample λ-mixing, on top of ``trl.DistillationTrainer``.

:class:`DistillationTrainer` is the engine and the drop-in for ``trl.DistillationTrainer``;
:class:`trl_opd.GKDTrainer` (``gkd.py``) is the same engine with the defaults and API of TRL's experimental GKD."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import DistillationTrainer as TRLDistillationTrainer
from trl.models.utils import unwrap_model_for_generation

from ..data import check_row_types, completion_token_ids, cut_after_first_eos, is_empty_completion
from ..divergences import LMHead
from ..scoring import left_padded
from ..sharding import gathered_heads
from ..teachers.alignment import teacher_view
from ..teachers.cache import row_hash
from ..teachers.routing import CACHE_ROW_COLUMN, TEACHER_ID_COLUMN
from .arguments import resolve_args
from .distillation_config import DistillationConfig
from .distillation_loss import distillation_loss
from .lifecycle import Completions, DistillationSetUp
from .mixing import MixedBatch, on_policy_mask
from .vllm_rollouts import vllm_engine_dtype


logger = logging.getLogger(__name__)

#: Why GKD needs dataset completions, and how to do without.
_HINT = (
    "A `completion` is needed because λ < 1 makes some rows off-policy; with lmbda=1.0 (constant) or seq_kd=True a "
    "`prompt` column suffices."
)
_NONFINITE_DIVERGENCE_CAUSE = (
    "NaN or inf in the student's or the teacher's logits: the student diverged (learning rate, fp16 overflow) or the "
    "teacher is corrupted (check its checkpoint and dtype: a bf16/fp16 teacher can overflow)"
)
_EVAL_HINT = "Evaluation with eval_lmbda < 1 trains some rows on dataset completions; set eval_lmbda=1.0 to sample all."


class DistillationTrainer(DistillationSetUp, TRLDistillationTrainer):
    """
    On-policy distillation, and generalized knowledge distillation (Agarwal et al., 2024) with per-sample λ-mixing
    and a λ schedule.

    Each row of the generation batch is on-policy with probability λ: the student samples its completion and the
    teacher scores the student's own prefix. The other rows are off-policy: they use the dataset's completion (or the
    teacher's sample with `seq_kd=True`). Only on-policy rows are generated. The loss is the chosen per-token divergence
    (FKL, RKL, generalized JSD(β) or TVD, see [`trl_opd.divergences`]) summed over every completion token of the
    generation batch and divided by the number of those tokens across gradient accumulation and processes, whatever
    mix of on- and off-policy rows the batch holds.

    A drop-in replacement for `trl.DistillationTrainer`: with the default [`DistillationConfig`] it trains as TRL's does
    (on-policy, β = 1, temperature on sampling and loss), on a prompt-only dataset. Everything else (λ < 1 and its
    schedule, the divergences, top-k, the teacher cache and routing, hooks, guards) is opt-in. [`trl_opd.GKDTrainer`]
    is this engine with the defaults and API of TRL's experimental `GKDTrainer` (docs/migrating.md).

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from trl_opd import DistillationConfig, DistillationTrainer

    >>> dataset = Dataset.from_list([{"prompt": "2 + 2 =", "completion": " 4"}] * 16)
    >>> trainer = DistillationTrainer(
    ...     model="path/to/student",
    ...     teacher_model="path/to/teacher",
    ...     args=DistillationConfig(output_dir="out", divergence="jsd", beta=0.5),  # on-policy; lmbda=0.5 mixes
    ...     train_dataset=dataset,
    ... )
    >>> trainer.train()
    ```

    Args:
        model: the student: a local path, a `PreTrainedModel` or a `PeftModel` (see `trl.DistillationTrainer`).
        teacher_model: the teacher: a local path or a `PreTrainedModel` sharing the student's tokenizer. Heads padded
            to different sizes (Qwen2.5-7B -> 1.5B) are compared on the shared vocabulary.
        args: a [`DistillationConfig`] (or a [`trl_opd.GKDConfig`], its subclass); default: this class's
            `config_class` with its defaults.
        train_dataset: `prompt` + `completion` (text or messages) or `messages`; `prompt` alone when λ ≡ 1 or
            `seq_kd=True`. Rows with an empty completion are dropped with a logged count.
        eval_dataset: same layout; evaluation uses `eval_lmbda` (default 1.0: the student's own samples).
        processing_class: the tokenizer; prompts are left-padded for generation whatever its `padding_side`.
        tools: functions the student may call, as in `trl.DistillationTrainer` (TRL's tool-calling loop); every row
            must then be on-policy (`lmbda=1.0`, constant).
        callbacks, optimizers: as in `transformers.Trainer`.
        quantization_config: a `BitsAndBytesConfig` used when `model` is a path; with `peft_config` this is QLoRA.
        peft_config: a `peft.LoraConfig` (or other weight adapter) to train adapters only.
        token_importance: a [`trl_opd.hooks.TokenImportance`]: TIP per-token loss weights.
        prefix_filter: a [`trl_opd.hooks.FlawedPrefixFilter`]: rejects degenerate on-policy rollouts before the teacher
            scores them (dropped from the loss, or replaced by the dataset completion).
        curriculum: a [`trl_opd.hooks.PacedCurriculum`]: samples examples at the student's frontier; its state is
            saved with each checkpoint and restored on resume.
        success_func: optional verifier for the curriculum, called like a GRPO reward function
            (`success_func(prompts=..., completions=..., **dataset_columns) -> list[float]` in [0, 1]) on on-policy
            rollouts. Without it the curriculum observes exp(−mean divergence) of each example.
        teacher_processing_class: the teacher's own tokenizer, for the compatibility check when the teacher is an
            instance without a tokenizer folder (see [`trl_opd.compatibility`]).
    """

    _tag_names = ["trl", "trl-opd", "distillation"]
    _name = "Distillation"
    #: The config built when ``args`` is None, and the output folder it gets.
    config_class = DistillationConfig
    default_output_dir = "distillation-output"
    _paper = {
        "title": "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes",
        "id": "2306.13649",
        "citation": textwrap.dedent("""\
            @inproceedings{agarwal2024on-policy,
                title     = {{On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes}},
                author    = {Rishabh Agarwal and Nino Vieillard and Yongchao Zhou and Piotr Stanczyk and Sabela Ramos Garea and Matthieu Geist and Olivier Bachem},
                year      = 2024,
                booktitle = {The Twelfth International Conference on Learning Representations, {ICLR} 2024},
            }"""),  # noqa: E501
    }

    def __init__(
        self,
        model: str | PreTrainedModel,
        teacher_model: str | PreTrainedModel | None = None,
        args: DistillationConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        token_importance=None,
        prefix_filter=None,
        curriculum=None,
        success_func=None,
        teacher_processing_class=None,
    ):
        args = resolve_args(args, DistillationConfig, self.default_output_dir, default_class=self.config_class)
        if teacher_model is None:
            teacher_model = args.teacher_model_name_or_path
        if teacher_model is None and args.teacher_cache is None and args.privileged_teacher is None:
            raise ValueError(
                f"{type(self).__name__} needs a teacher: pass teacher_model= (a path, a model, or a mapping "
                "{id: model} routed by a `teacher_id` column), set teacher_model_name_or_path, or serve a λ ≡ 0 run "
                "from teacher_cache=."
            )
        self._check_privileged_setup(teacher_model, args, seq_kd=args.seq_kd, eval_dataset=eval_dataset)
        self._check_teacher_setup(teacher_model, args, eval_dataset)
        self._check_tools(tools, args, eval_dataset)
        self._completions = Completions(
            train=args.needs_dataset_completions, eval=args.eval_lmbda < 1.0, train_hint=_HINT, eval_hint=_EVAL_HINT
        )
        hooks = dict(
            token_importance=token_importance,
            prefix_filter=prefix_filter,
            curriculum=curriculum,
            success_func=success_func,
        )
        setup = self._set_up_before_base(
            model,
            processing_class,
            teacher_model,
            args,
            train_dataset,
            eval_dataset,
            completions=self._completions,
            hooks=hooks,
        )
        # The trainer keeps the evaluation datasets as given (as TRL does) and evaluates their checked and converted
        # copies (`get_eval_dataloader`).
        self._eval_prepared = self._pair_eval_datasets(eval_dataset, setup.eval_dataset)
        with vllm_engine_dtype(args):  # the colocated vLLM engine, when used, in the dtype asked for
            super().__init__(
                model=model,
                teacher_model=None,  # loaded above: the parent refuses heads of unequal `config.vocab_size`
                args=args,
                train_dataset=setup.train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
                tools=tools,
            )
        if self._is_vlm:
            raise ValueError(
                f"trl_opd.{type(self).__name__} supports text models only; use trl.DistillationTrainer for VLMs."
            )
        self._set_up_after_base(setup, teacher_processing_class, run_backbone=self._run_teacher_backbone)
        self.divergence = args.divergence
        self.seq_kd = args.seq_kd
        self._mixed: MixedBatch | None = None  # the generation batch being built

    @staticmethod
    def _check_tools(tools, args, eval_dataset) -> None:
        """Tool calling (TRL's loop: parse each completion, run its calls, let the student continue) applies to the
        student's own rollouts only: every row must be on-policy, in training and in evaluation."""
        if not tools:
            return
        always_on_policy = args.lambda_schedule().always_on_policy and not args.seq_kd
        if not always_on_policy or (eval_dataset is not None and args.eval_lmbda < 1.0):
            raise ValueError(
                "tools= runs TRL's tool-calling loop on the student's own rollouts, so every row must be on-policy: "
                "set lmbda=1.0 (or a schedule that stays at 1), seq_kd=False (and eval_lmbda=1.0 with an "
                "eval_dataset), or drop tools."
            )

    @staticmethod
    def _pair_eval_datasets(given, prepared) -> list[tuple[Any, Any]]:
        """``[(given, prepared)]`` for each evaluation dataset (one, or each value of a dict)."""
        if given is None:
            return []
        if isinstance(given, Mapping):
            return [(given[key], prepared[key]) for key in given]
        return [(given, prepared)]

    def get_eval_dataloader(self, eval_dataset=None):
        """TRL's evaluation loader, over the converted copy of the dataset named or given (see ``__init__``)."""
        given = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(eval_dataset, str):
            given = self.eval_dataset[eval_dataset]
        if given is None:
            return super().get_eval_dataloader(eval_dataset)
        prepared = next((ready for ds, ready in self._eval_prepared if ds is given), None)
        if prepared is None:  # a dataset passed to evaluate() directly
            _, prepared = self._prepare_datasets(None, given, self._completions)
            self._eval_prepared.append((given, prepared))
        return super().get_eval_dataloader(prepared)

    @staticmethod
    def _check_teacher_setup(teacher_model, args, eval_dataset) -> None:
        """What a run without a live teacher, or with several, cannot do (refused up front, naming the fix)."""
        several = isinstance(teacher_model, Mapping) and len(teacher_model) > 1
        if several and args.seq_kd:
            raise ValueError("seq_kd samples off-policy rows from one teacher: give one teacher, or seq_kd=False.")
        if several and args.teacher_cache is not None:
            raise ValueError("A teacher cache holds one teacher's targets: use it with a single teacher_model.")
        if teacher_model is not None or args.privileged_teacher is not None:
            return
        if not args.lambda_schedule().always_off_policy or args.seq_kd:
            raise ValueError(
                "Without teacher_model every row must be served by the teacher cache: that is λ ≡ 0 (lmbda=0.0 "
                "(constant), or a schedule that stays at 0) and seq_kd=False. Pass teacher_model for the on-policy "
                "rows of a mixed run."
            )
        if eval_dataset is not None and args.eval_lmbda > 0.0:
            raise ValueError(
                "Evaluation samples from the student (eval_lmbda > 0), which needs a live teacher: pass teacher_model, "
                "set eval_lmbda=0.0, or drop eval_dataset."
            )

    def _log_teacher_sides(self, per_side: dict[str, tuple[float, int]]) -> None:
        """``teacher/<id>/divergence`` (token mean) and ``teacher/<id>/tokens`` per teacher side, when there are
        several teachers or a cache (``<id>`` = ``cache`` for the cached rows)."""
        if not (self.teachers.routed or self.teachers.cache is not None):
            return
        mode = "train" if self.model.training else "eval"
        for label, (total, tokens) in per_side.items():
            self._metrics[mode][f"teacher/{label}/tokens"].append(float(tokens))
            self._metrics[mode][f"teacher/{label}/divergence"].append(total / max(tokens, 1))

    def _run_teacher_backbone(self, prepared, unwrapped, input_ids, attention_mask, logits_to_keep):
        # Through the teacher's own wrapper, so FSDP/DeepSpeed materialize its sharded parameters (as TRL does).
        return self._forward_redirection(
            prepared, unwrapped, self._get_last_hidden_state, unwrapped, input_ids, attention_mask, logits_to_keep
        )

    # ------------------------------------------------------------------------------------------------------------------
    # Sampling mixture
    # ------------------------------------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = ["completion", TEACHER_ID_COLUMN, CACHE_ROW_COLUMN]
        self._signature_columns = [*self._signature_columns, *(c for c in extra if c not in self._signature_columns)]

    @property
    def loss_temperature(self) -> float:
        """The temperature applied to both models' logits in the loss: ``args.loss_temperature``, or the sampling
        ``temperature`` when that is ``None`` (TRL's ``DistillationTrainer``; [`trl_opd.GKDConfig`] defaults to 1.0 as
        TRL's experimental GKD, which tempers sampling only)."""
        value = self.args.loss_temperature
        return self.temperature if value is None else value

    def current_lmbda(self) -> float:
        """λ for the generation batch about to be drawn (training: the schedule at the current step)."""
        if not self.model.training:
            return self.args.eval_lmbda
        return self.args.lambda_schedule().at_step(self.state.global_step, self.state.max_steps)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            self._apply_curriculum_observations()
            self._log_curriculum_batch()
        lmbda = self.current_lmbda()
        on_policy = on_policy_mask(
            len(inputs),
            lmbda,
            self.args.mixing_seed,
            self.state.global_step if mode == "train" else -1 - self.state.global_step,
            self.accelerator.process_index,
            self.accelerator.num_processes,
        )
        if not isinstance(self.train_dataset, Dataset):  # streamed rows were not checked up front
            for row in inputs:
                check_row_types(row, "train_dataset")
        on_policy = self._fallback_empty_completions(inputs, on_policy, mode)
        batch = self._mixed = MixedBatch(inputs, on_policy)
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._mixed = None
        on_policy, dropped = batch.on_policy, batch.dropped  # after the prefix filter's replacements
        if batch.any_dropped:  # rejected rollouts stay in the batch with no token trained on
            keep = torch.tensor([not d for d in dropped], device=output["completion_mask"].device)
            output["completion_mask"] = output["completion_mask"] * keep.unsqueeze(1)
            output["num_items_in_batch"] = self.accelerator.gather(output["completion_mask"].sum()).sum()
        device = self.accelerator.device
        output["teacher_index"] = torch.tensor([self.teachers.index_of(row) for row in inputs], device=device)
        output["teacher_cache_row"] = torch.tensor(batch.cache_rows, device=device)
        if "example_index" in inputs[0]:
            output["example_index"] = torch.tensor(
                [row["example_index"] for row in inputs], device=self.accelerator.device
            )
        if self.success_func is not None and mode == "train":
            self._observe_success(inputs, output, on_policy, dropped)

        n_tokens = output["num_items_in_batch"]
        if int(n_tokens) == 0:
            raise RuntimeError(
                "This generation batch has no completion token to train on (every completion is empty). Check "
                "max_completion_length and the dataset's completions."
            )
        device = self.accelerator.device
        flags = self.accelerator.gather(torch.tensor(on_policy, dtype=torch.float32, device=device))
        self._metrics[mode]["lmbda"].append(lmbda)
        self._metrics[mode]["on_policy_fraction"].append(flags.mean().item())
        self._metrics[mode]["num_tokens_trained"].append(float(n_tokens))
        return output

    def _fallback_empty_completions(self, inputs: list[dict], on_policy: list[bool], mode: str) -> list[bool]:
        """Off-policy rows whose dataset completion is empty (possible in streamed datasets) are sampled instead."""
        if self.seq_kd:
            return on_policy
        empty = [
            i
            for i, (row, flag) in enumerate(zip(inputs, on_policy, strict=True))
            if not flag and is_empty_completion(row.get("completion"))
        ]
        if "completion" not in inputs[0] and not all(on_policy):
            raise ValueError(
                "Off-policy rows need a `completion` column (λ < 1); the dataset only has "
                f"{sorted(inputs[0])}. Use lmbda=1.0, seq_kd=True, or add completions."
            )
        if empty:
            logger.warning("%d off-policy rows have an empty completion; sampling them from the student.", len(empty))
            on_policy = [flag or i in empty for i, flag in enumerate(on_policy)]
        self._metrics[mode]["empty_completions_resampled"].append(float(len(empty)))
        return on_policy

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        # The parent tokenized the prompts of `self._mixed`; fill in each row's completion by its source.
        batch = self._mixed
        if batch is None:  # outside `_generate_and_score_completions`, or a tool-call turn after the first: on-policy
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
        self._mixed = None  # this batch's rows are filled once; TRL's tool loop samples its later turns plainly
        completions: list[list[int] | None] = [None] * len(batch.rows)
        sampled = batch.sampled
        if sampled:
            generated = super()._generate_single_turn([prompt_ids[i] for i in sampled], None, {}, False)
            reasons = self._flawed_prefix_reasons([prompt_ids[i] for i in sampled], generated)
            for i, ids, reason in zip(sampled, generated, reasons, strict=True):
                completions[i] = ids
                if reason is not None:
                    self._reject_rollout(batch, i)
            if all(batch.dropped):
                logger.warning("Every rollout of this batch was rejected as flawed; training it off-policy instead.")
                for i in range(len(batch.rows)):
                    self._reject_rollout(batch, i, force_replace=True)
        off_policy = batch.off_policy
        if off_policy and self.seq_kd:
            generated = self._teacher_generate([prompt_ids[i] for i in off_policy])
            for i, ids in zip(off_policy, generated, strict=True):
                completions[i] = ids
        else:
            for i in off_policy:
                row = batch.rows[i]
                completions[i] = self._tokenize_completion(row["prompt"], row["completion"], prompt_ids[i])
            self._serve_from_cache(batch, off_policy, prompt_ids, completions)
        return completions

    def _serve_from_cache(self, batch: MixedBatch, rows: list[int], prompt_ids, completions) -> None:
        """Mark the off-policy rows whose teacher targets the cache holds, after checking their token ids match."""
        cache = self.teachers.cache
        if cache is None or not rows:
            return
        keys = [int(batch.rows[i][CACHE_ROW_COLUMN]) for i in rows]
        cache.verify(keys, [row_hash(list(prompt_ids[i]), completions[i]) for i in rows])
        for i, key in zip(rows, keys, strict=True):
            batch.cache_rows[i] = key

    def _reject_rollout(self, batch: MixedBatch, i: int, force_replace: bool = False) -> None:
        """Apply the prefix filter's policy to row ``i``: off-policy with the dataset completion, or dropped."""
        replace = force_replace or self.prefix_filter.policy == "replace"
        if replace and not is_empty_completion(batch.rows[i].get("completion")):
            batch.train_off_policy(i)
        elif force_replace:
            raise RuntimeError(
                "Every rollout of this batch was rejected as flawed and the dataset has no completions to fall back "
                "on. Loosen the filter (max_perplexity, loop_min_repeats) or add a `completion` column."
            )
        else:
            batch.drop(i)

    def _tokenize_completion(self, prompt, completion, prompt_ids: list[int]) -> list[int]:
        """Token ids of a dataset completion, as the model would have generated them after ``prompt_ids``
        (:func:`trl_opd.data.completion_token_ids`), cut to ``max_completion_length``."""
        ids = completion_token_ids(
            self._tokenizer,
            prompt,
            completion,
            eos_token_ids=self.eos_token_ids,
            chat_template_kwargs=self.chat_template_kwargs,
        )
        return ids if self.max_completion_length is None else ids[: self.max_completion_length]

    @torch.no_grad()
    def _teacher_generate(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """Sample completions from the teacher (sequence-level KD), cut after the first end-of-sequence token."""
        input_ids, attention_mask = left_padded(prompt_ids, self._tokenizer.pad_token_id, self.accelerator.device)
        with unwrap_model_for_generation(
            self.teacher_model, self.accelerator, generation_kwargs=self.generation_kwargs
        ) as teacher:
            out = teacher.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=self.generation_config
            )
        return [cut_after_first_eos(row, self.eos_token_ids) for row in out[:, input_ids.size(1) :].tolist()]

    # ------------------------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------------------------

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        """Σ_tokens w_t · D(p_T ‖ p_S)_t / num_items_in_batch over the completion tokens, with the chunked divergence.

        w_t are the TIP weights (1 without ``token_importance``); tokens of weight 0 are skipped in the backward pass.
        ``num_items_in_batch`` is the number of completion tokens of the whole generation batch (all processes and
        accumulation steps, set by the parent), so the loss is correct under gradient accumulation.
        """
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        loss_mask = inputs["completion_mask"].bool()
        logits_to_keep = inputs["completion_ids"].size(1)

        student_hidden = self._get_last_hidden_state(unwrapped_student, input_ids, attention_mask, logits_to_keep)
        student_head = LMHead.of(unwrapped_student)
        device = student_head.weight.device
        loss_mask = loss_mask.to(device)
        teacher_ids, teacher_mask = teacher_view(inputs, input_ids, attention_mask)  # the teacher's own prompt
        sides = self.teachers.sides(
            teacher_ids,
            teacher_mask,
            logits_to_keep,
            loss_mask,
            inputs.get("teacher_index"),
            inputs.get("teacher_cache_row"),
        )
        h_s = student_hidden.to(device)[loss_mask]
        n_valid = loss_mask.sum()
        normalizer = n_valid.clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        # Without TIP every weight is 1: gradients computed in the forward pass, each chunk projected once. TIP's
        # weights depend on the divergences: per-token values first, the backward skips weight-0 tokens.
        weigh = None if self.token_importance is None else self._token_importance_weights
        # The fused loss reads both heads directly: full on every rank for the call (ZeRO-3; trl_opd.sharding).
        with gathered_heads(unwrapped_student, *(t.unwrapped for t in self.teachers.teachers.values())):
            loss, values, entropy, per_side = distillation_loss(
                h_s,
                student_head,
                sides,
                divergence=self.divergence,
                beta=self.beta,
                temperature=self.loss_temperature,
                vocab_size=self.vocab_size,
                normalizer=normalizer,
                top_k=self.teacher_top_k,
                weigh=weigh,
            )
        self._log_teacher_sides(per_side)
        if not self.check_finite(f"the per-token {self.divergence} divergence", values, _NONFINITE_DIVERGENCE_CAUSE):
            return h_s.sum() * 0.0, entropy.sum().detach() * 0.0, n_valid  # the step is skipped (nonfinite_policy)
        self._curriculum_divergence_observations(inputs, loss_mask, values)
        return loss, entropy.sum().detach(), n_valid
