"""Plumbing shared by every trainer that accepts the stability hooks (TIP, PACED, flawed-prefix rejection).

A trainer mixes :class:`HookedTrainerMixin` in before its TRL base class (through
:class:`trl_opd.trainers.lifecycle.DistillationSetUp`, which calls :meth:`_init_hooks` before the base ``__init__``:
it adds the ``example_index`` column the curriculum needs), and uses the named helpers where its generation and loss
happen. Everything each hook does is logged under its own prefix.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Callable

import torch
from accelerate.utils import gather_object
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.data_utils import is_conversational

from ..hooks import FlawedPrefixFilter, PacedCurriculum, TokenImportance
from ..scoring import completion_token_log_probs, pack, per_row


logger = logging.getLogger(__name__)

CURRICULUM_STATE_NAME = "paced_curriculum.json"


class HookedTrainerMixin:
    """TIP weights, PACED sampling (+ checkpointed state), flawed-prefix rejection for a TRL trainer subclass."""

    token_importance: TokenImportance | None = None
    prefix_filter: FlawedPrefixFilter | None = None
    curriculum: PacedCurriculum | None = None
    success_func: Callable | None = None

    def _init_hooks(self, train_dataset, token_importance=None, prefix_filter=None, curriculum=None, success_func=None):
        """Store the hooks, check their types; with a curriculum, index the dataset and bind the curriculum to it."""
        for value, cls, name in (
            (token_importance, TokenImportance, "token_importance"),
            (prefix_filter, FlawedPrefixFilter, "prefix_filter"),
            (curriculum, PacedCurriculum, "curriculum"),
        ):
            if value is not None and not isinstance(value, cls):
                raise TypeError(f"{name} must be a trl_opd.hooks.{cls.__name__}, got {type(value).__name__}.")
        self.token_importance, self.prefix_filter, self.curriculum = token_importance, prefix_filter, curriculum
        self.success_func = success_func
        self._curriculum_observations: list[tuple[int, float]] = []
        if curriculum is None:
            if success_func is not None:
                raise ValueError("success_func only feeds the curriculum: pass curriculum=PacedCurriculum(...) too.")
            return train_dataset
        if not hasattr(train_dataset, "__len__"):
            raise ValueError(
                "The PACED curriculum samples by index: it needs a map-style datasets.Dataset, not a stream."
            )
        if "example_index" not in train_dataset.column_names:
            train_dataset = train_dataset.map(lambda _, i: {"example_index": i}, with_indices=True)
        difficulty = None
        if "completion" in train_dataset.column_names:  # easy -> hard warm-up by reference completion length
            difficulty = [len(str(c)) for c in train_dataset["completion"]]
        curriculum.bind(len(train_dataset), difficulty=difficulty)
        return train_dataset

    # ---------------------------------------------------------------------------------------------------------- PACED

    def _get_train_sampler(self, dataset=None):
        if self.curriculum is None:
            return super()._get_train_sampler(dataset)
        generation_batch_size = (
            self.args.per_device_train_batch_size
            * self.accelerator.num_processes
            * self.args.gradient_accumulation_steps
        )
        return self.curriculum.sampler(
            batch_size=generation_batch_size, repeat_count=self.args.gradient_accumulation_steps, seed=self.args.seed
        )

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.curriculum is not None and "example_index" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "example_index"]

    def _record_curriculum_observations(self, example_index: torch.Tensor, observations: torch.Tensor) -> None:
        """Queue per-example success observations in [0, 1]; applied at the next generation batch on every process."""
        if self.curriculum is not None and self.model.training:
            self._curriculum_observations += list(
                zip(example_index.tolist(), observations.detach().float().tolist(), strict=True)
            )

    def _apply_curriculum_observations(self) -> None:
        """Gather every process's queued observations and update the curriculum identically everywhere.

        Called at each training generation batch and before each checkpoint (on every process: it gathers).
        """
        if self.curriculum is None:
            return
        gathered = (
            gather_object(self._curriculum_observations)
            if self.accelerator.num_processes > 1
            else (self._curriculum_observations)
        )
        self._curriculum_observations = []
        if gathered:
            indices, observations = zip(*gathered, strict=True)
            self.curriculum.update(list(indices), list(observations))

    def _log_curriculum_batch(self) -> None:
        """Log the curriculum metrics of the generation batch being trained now (the sampler draws one ahead)."""
        if self.curriculum is None or not self.model.training:
            return
        try:
            metrics = self.curriculum.batch_record(self.state.global_step)["metrics"]
        except KeyError:
            metrics = self.curriculum.last_batch_metrics()
        for key, value in metrics.items():
            self._metrics["train"][key].append(float(value))

    def _observe_success(self, inputs, output, on_policy, dropped) -> None:
        """Score the kept on-policy rollouts with `success_func` (GRPO reward-function style) and queue them as
        curriculum observations."""
        rows = [i for i, (flag, drop) in enumerate(zip(on_policy, dropped, strict=True)) if flag and not drop]
        if not rows:
            return
        texts = self._tokenizer.batch_decode(
            [output["completion_ids"][i][output["completion_mask"][i].bool()] for i in rows], skip_special_tokens=True
        )
        prompts = [inputs[i]["prompt"] for i in rows]
        completions = [[{"role": "assistant", "content": t}] for t in texts] if is_conversational(inputs[0]) else texts
        columns = {key: [inputs[i][key] for i in rows] for key in inputs[0] if key not in ("prompt", "completion")}
        scores = torch.tensor(self.success_func(prompts=prompts, completions=completions, **columns), dtype=torch.float)
        if scores.shape != (len(rows),) or not bool(((scores >= 0) & (scores <= 1)).all()):
            raise ValueError(f"success_func must return {len(rows)} scores in [0, 1]; got {scores.tolist()}.")
        self._record_curriculum_observations(output["example_index"][rows], scores)

    def _curriculum_divergence_observations(self, inputs, loss_mask, values) -> None:
        """The no-verifier proxy: each row's mean per-token divergence D, observed as exp(−D)."""
        if self.curriculum is None or self.success_func is not None or "example_index" not in inputs:
            return
        rows = loss_mask.nonzero()[:, 0]
        n_rows = loss_mask.shape[0]
        sums = torch.zeros(n_rows, device=values.device).index_add_(0, rows, values.detach().float())
        counts = loss_mask.sum(1).clamp(min=1).to(values.device)
        self._record_curriculum_observations(
            inputs["example_index"], self.curriculum.observation_from_divergence(sums / counts)
        )

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.curriculum is None:
            return
        self._apply_curriculum_observations()  # the last batch's observations belong in this checkpoint
        if self.accelerator.is_main_process:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            # One generation batch per optimizer step: batches drawn ahead but not trained are replayed on resume.
            self.curriculum.save(os.path.join(folder, CURRICULUM_STATE_NAME), consumed_batches=self.state.global_step)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.curriculum is None:
            return
        path = os.path.join(resume_from_checkpoint, CURRICULUM_STATE_NAME)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{resume_from_checkpoint} has no {CURRICULUM_STATE_NAME}: it was saved without a curriculum."
            )
        self.curriculum.load(path)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train``; resuming with a curriculum, the dataloader is not fast-forwarded: the restored sampler
        already continues where the run stopped (skipping batches would redraw them). That setting lives on a copy of
        the arguments for the duration of the call, so the user's ``args`` are left as they were."""
        if self.curriculum is None or not resume_from_checkpoint or self.args.ignore_data_skip:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        user_args = self.args
        self.args = copy.copy(user_args)
        self.args.ignore_data_skip = True
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.args = user_args

    # ------------------------------------------------------------------------------------------------------------ TIP

    def _token_importance_weights(self, values, teacher_entropy, student_entropy) -> torch.Tensor | None:
        if self.token_importance is None:
            return None
        weights, metrics = self.token_importance.weights(values, teacher_entropy, student_entropy, self.vocab_size)
        mode = "train" if self.model.training else "eval"
        for key, value in metrics.items():
            self._metrics[mode][key].append(value)
        return weights

    # ------------------------------------------------------------------------------------------- flawed prefixes

    @torch.no_grad()
    def _student_token_log_probs(self, prompt_ids: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        """log p_θ(y_t | x, y<t) of each completion token under the student (temperature 1), one no-grad pass."""
        student = self.accelerator.unwrap_model(self.model)
        batch = pack(prompt_ids, completions, self._tokenizer.pad_token_id, self.accelerator.device)
        return per_row(completion_token_log_probs(student, batch), batch)

    def _flawed_prefix_reasons(
        self, prompt_ids: list[list[int]], completions: list[list[int]], log_probs: list[list[float]] | None = None
    ) -> list[str | None]:
        """Why each rollout is rejected (``"loop"`` / ``"perplexity"``) or ``None``; logs counts by reason.

        ``log_probs``: the student's token log-probabilities of the completions, when the caller already has them.
        """
        if self.prefix_filter is None or not completions:
            return [None] * len(completions)
        if log_probs is None:
            log_probs = (
                self._student_token_log_probs(prompt_ids, completions)
                if self.prefix_filter.needs_log_probs
                else [None] * len(completions)
            )
        reasons = [self.prefix_filter.reason(c, lp) for c, lp in zip(completions, log_probs, strict=True)]
        mode = "train" if self.model.training else "eval"
        n_rejected = sum(r is not None for r in reasons)
        self._metrics[mode]["prefix_filter/rejected"].append(float(n_rejected))
        self._metrics[mode]["prefix_filter/rejected_fraction"].append(n_rejected / len(reasons))
        for reason in ("loop", "perplexity"):
            self._metrics[mode][f"prefix_filter/rejected_{reason}"].append(float(reasons.count(reason)))
        return reasons
