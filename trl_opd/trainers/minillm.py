"""MiniLLM: reverse-KL distillation as policy gradient, with reward extrapolation, on top of ``trl.GRPOTrainer``."""

from __future__ import annotations

import copy
import logging
import math
import textwrap
from collections.abc import Mapping
from typing import Any

import torch
from accelerate.utils import is_peft_model
from trl import GRPOTrainer

from ..divergences import chunked_per_token_divergence, chunked_token_log_probs
from ..policy_gradient import minillm_advantages, token_rewards
from ..scoring import last_hidden_states, left_padded
from ..sharding import full_head, gathered_heads, unsharded
from ..teachers.alignment import teacher_view
from .arguments import resolve_args
from .lifecycle import Completions, DistillationSetUp
from .minillm_config import MiniLLMConfig
from .rewards import CheckedReward, checked_reward_funcs
from .vllm_rollouts import vllm_engine_dtype


logger = logging.getLogger(__name__)

_TEACHER_CAUSE = "the teacher produced NaN/inf logits (a corrupted checkpoint, or fp16/bf16 overflow in the teacher)"
_STUDENT_CAUSE = "the student's logits overflowed (learning rate too high, fp16) or a reward was not finite"


def no_external_reward(prompts=None, completions=None, **kwargs) -> list[float]:
    """Stands in for `reward_funcs` in pure distillation (GRPO requires one reward source); always 0."""
    return [0.0] * len(completions)


class MiniLLMTrainer(DistillationSetUp, GRPOTrainer):
    """
    MiniLLM (Gu et al., 2024): minimise the sequence-level reverse KL(p_θ ‖ p_T) by policy gradient on the student's own
    samples, with reward extrapolation (verifier rewards, and ExOPD's λ over a reference model).

    Per-token reward `r_t = log p_T(y_t | y<t) − log p_θ(y_t | y<t)` (both at the sampling temperature), advantages are
    discounted, length-normalised rewards-to-go minus a baseline ([`trl_opd.policy_gradient`]); GRPO's clipped
    surrogate (`epsilon`, `num_iterations`) and entropy bonus (`entropy_coef`) train on them. Verifiers are ordinary
    GRPO `reward_funcs`: their weighted sum, times `external_reward_coef`, is added at each completion's last token.

    Example:

    ```python
    >>> from trl_opd import MiniLLMConfig, MiniLLMTrainer
    >>> trainer = MiniLLMTrainer(
    ...     model="path/to/student", teacher_model="path/to/teacher", reward_funcs=[accuracy],
    ...     args=MiniLLMConfig(output_dir="out", num_generations=4, external_reward_coef=1.0),
    ...     train_dataset=dataset,
    ... )
    >>> trainer.train()
    ```

    Args:
        model: the student (path, `PreTrainedModel` or `PeftModel`), as in `trl.GRPOTrainer`.
        teacher_model: the teacher (path or `PreTrainedModel`) sharing the student's tokenizer; `None` with
            `args.privileged_teacher` (the student shown each row's `privileged_context`, docs/self-distillation.md).
        reward_funcs: verifiers, as in GRPO; may be empty (pure distillation).
        args: a [`MiniLLMConfig`].
        train_dataset, eval_dataset: datasets with a `prompt` column (text or messages) and any columns the
            verifiers read.
        processing_class, reward_processing_classes, callbacks, optimizers, quantization_config, peft_config: as in
            `trl.GRPOTrainer` (`quantization_config` + `peft_config` = QLoRA).
        ref_model: reference π_ref for `extrapolation_lambda != 1` without PEFT (default: a frozen copy of the initial
            student). With PEFT the reference is the same model with its adapter disabled, never a copy.
        token_importance: a [`trl_opd.hooks.TokenImportance`]: TIP weights multiply the per-token advantages (the
            divergence it scores with is the exact per-token reverse KL).
        prefix_filter: a [`trl_opd.hooks.FlawedPrefixFilter`]: flawed rollouts are dropped from the loss (there is no
            dataset completion to fall back on here).
        teacher_processing_class: the teacher's own tokenizer, for the compatibility check when the teacher is an
            instance without a tokenizer folder (see [`trl_opd.compatibility`]).
    """

    _tag_names = ["trl", "trl-opd", "minillm", "distillation"]
    _name = "MiniLLM"
    _paper = {
        "title": "MiniLLM: Knowledge Distillation of Large Language Models",
        "id": "2306.08543",
        "citation": textwrap.dedent("""\
            @inproceedings{gu2024minillm,
                title     = {{MiniLLM: Knowledge Distillation of Large Language Models}},
                author    = {Yuxian Gu and Li Dong and Furu Wei and Minlie Huang},
                year      = 2024,
                booktitle = {The Twelfth International Conference on Learning Representations, {ICLR} 2024},
            }"""),  # noqa: E501
    }

    def __init__(
        self,
        model,
        teacher_model=None,
        reward_funcs=None,
        args: MiniLLMConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        ref_model=None,
        token_importance=None,
        prefix_filter=None,
        teacher_processing_class=None,
    ):
        args = resolve_args(args, MiniLLMConfig, "minillm-output")
        self._check_privileged_setup(teacher_model, args, eval_dataset=eval_dataset)
        if teacher_model is None and args.privileged_teacher is None:
            raise ValueError(
                "MiniLLMTrainer needs a teacher_model (a path or a PreTrainedModel), or privileged_teacher (the "
                "student shown each row's privileged_context)."
            )
        if isinstance(teacher_model, Mapping):
            raise ValueError("MiniLLMTrainer distils from one teacher; pass a path or a model, not a mapping.")
        if reward_funcs is None:
            reward_funcs = []
        elif not isinstance(reward_funcs, list):
            reward_funcs = [reward_funcs]
        self.has_external_rewards = bool(reward_funcs)
        reward_funcs = checked_reward_funcs(reward_funcs, lambda quantity, cause: self.nonfinite(quantity, cause))
        if not reward_funcs:
            reward_funcs = [no_external_reward]
        setup = self._set_up_before_base(
            model, processing_class, teacher_model, args, train_dataset, eval_dataset,
            completions=Completions(),  # rollouts are the student's own: a `prompt` column suffices
            hooks=dict(token_importance=token_importance, prefix_filter=prefix_filter),
        )  # fmt: skip
        with vllm_engine_dtype(args):  # the colocated vLLM engine, when used, in the dtype asked for
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=setup.train_dataset,
                eval_dataset=setup.eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
            )
        self._set_up_after_base(setup, teacher_processing_class)
        self.extrapolation_ref = None
        if args.extrapolation_lambda != 1.0 and not is_peft_model(self.model):
            if ref_model is None:
                ref_model = copy.deepcopy(self.accelerator.unwrap_model(self.model))
            ref_model.requires_grad_(False)
            self.extrapolation_ref = self.accelerator.prepare_model(ref_model.eval(), evaluation_mode=True)
        elif ref_model is not None:
            logger.warning("ref_model is only used with extrapolation_lambda != 1 and without PEFT; ignoring it.")
        self._last_rewards_per_func = None

    # ------------------------------------------------------------------------------------------------------------------

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.args.teacher_mix_alpha > 0 and self.model.training and not self.use_vllm:
            return self._sample_from_mixture(prompt_ids), None
        return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)

    @torch.no_grad()
    def _sample_from_mixture(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """Sample each token from ``α·softmax(z_T/τ) + (1 − α)·softmax(z_θ/τ)`` (top-k/top-p are not applied).

        Both models advance together with their KV caches; each completion stops at its first end-of-sequence token.
        """
        alpha, device = self.args.teacher_mix_alpha, self.accelerator.device
        student = self.accelerator.unwrap_model(self.model)
        teacher = self.teacher.unwrapped
        ids, attention = left_padded(prompt_ids, self._tokenizer.pad_token_id, device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        was_training = student.training
        student.eval()
        try:
            s_out = student(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True)
            t_out = teacher(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True)
            eos = torch.tensor(self.eos_token_ids, device=device)
            done = torch.zeros(len(prompt_ids), dtype=torch.bool, device=device)
            completions = [[] for _ in prompt_ids]
            for _ in range(self.max_completion_length):
                probs = alpha * torch.softmax(t_out.logits[:, -1, : self.vocab_size].float() / self.temperature, -1)
                probs += (1 - alpha) * torch.softmax(
                    s_out.logits[:, -1, : self.vocab_size].float() / self.temperature, -1
                )
                token = torch.multinomial(probs, 1).squeeze(1)
                for row in (~done).nonzero()[:, 0].tolist():
                    completions[row].append(int(token[row]))
                done |= torch.isin(token, eos)
                if done.all():
                    break
                attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
                step = dict(
                    input_ids=token.unsqueeze(1), attention_mask=attention, position_ids=positions, use_cache=True
                )
                s_out = student(**step, past_key_values=s_out.past_key_values)
                t_out = teacher(**step, past_key_values=t_out.past_key_values)
        finally:
            student.train(was_training)
        return completions

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func  # all processes' rows, for the external reward
        return rewards_per_func

    @torch.no_grad()
    def _student_log_probs(self, model, ids, attention_mask, k, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(y_t), hidden)`` of the masked completion tokens under a student-shaped ``model`` (the student,
        its adapter-disabled base, or the frozen reference copy) at the sampling temperature."""
        unwrapped = self.accelerator.unwrap_model(model)
        with unsharded(unwrapped):
            hidden = last_hidden_states(unwrapped, ids, attention_mask, k)[mask]
        with gathered_heads(unwrapped):
            log_probs = chunked_token_log_probs(
                hidden,
                full_head(unwrapped),
                ids[:, -k:][mask],
                temperature=self.temperature,
                vocab_size=self.vocab_size,
            )
        return log_probs, hidden

    @torch.no_grad()
    def _reference_log_probs(self, ids, attention_mask, k, mask) -> torch.Tensor:
        """π_ref's log-probs: the adapter-disabled student with PEFT, else the frozen reference copy."""
        if self.extrapolation_ref is not None:
            return self._student_log_probs(self.extrapolation_ref, ids, attention_mask, k, mask)[0]
        unwrapped = self.accelerator.unwrap_model(self.model)
        with unwrapped.disable_adapter():
            return self._student_log_probs(unwrapped, ids, attention_mask, k, mask)[0]

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        args = self.args
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        k = output["completion_ids"].size(1)
        mask = output["completion_mask"].bool()
        if "tool_mask" in output:
            mask = mask & output["tool_mask"].bool()

        s_lp, s_hidden = self._student_log_probs(self.model, ids, attention_mask, k, mask)
        t_ids, t_attention = teacher_view(output, ids, attention_mask)  # the teacher's own prompt, if it has one
        t_lp, t_hidden = self.teacher.token_log_probs(t_ids, t_attention, k, mask, self.temperature)
        with torch.no_grad(), gathered_heads(self.accelerator.unwrap_model(self.model), self.teacher.unwrapped):
            rkl, s_entropy, t_entropy = chunked_per_token_divergence(
                s_hidden,
                t_hidden,
                self.student_head,
                self.teacher.head,
                "rkl",
                temperature=self.temperature,
                vocab_size=self.vocab_size,
                return_entropy=True,
                return_teacher_entropy=True,
            )
        ref_lp = None
        if args.extrapolation_lambda != 1.0:
            ref_lp = self._reference_log_probs(ids, attention_mask, k, mask)

        # Flawed rollouts leave the loss (their tokens are masked) before anything is computed from them.
        dropped = self._drop_flawed_rollouts(output, mask, s_lp)
        if dropped.any():
            keep = ~dropped[mask.nonzero()[:, 0]]
            mask = mask & ~dropped.unsqueeze(1)
            s_lp, t_lp, rkl, s_entropy, t_entropy = (x[keep] for x in (s_lp, t_lp, rkl, s_entropy, t_entropy))
            ref_lp = None if ref_lp is None else ref_lp[keep]
            output["completion_mask"] = output["completion_mask"] * mask
            output["num_items_in_batch"] = self.accelerator.gather(output["completion_mask"].sum()).sum()

        def full(values: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
            out[mask] = values.float()
            return out

        finite = self.check_finite("the teacher's log-probabilities of the sampled tokens", t_lp, _TEACHER_CAUSE)
        finite &= self.check_finite("the student's log-probabilities of its own samples", s_lp, _STUDENT_CAUSE)
        if ref_lp is not None:
            finite &= self.check_finite("the reference model's log-probabilities", ref_lp, _STUDENT_CAUSE)
        rewards = token_rewards(t_lp, s_lp, ref_lp, args.extrapolation_lambda)
        external = self._external_rewards(len(inputs), mask.device)
        advantages = minillm_advantages(
            full(rewards),
            mask.float(),
            args.gamma,
            args.length_normalization,
            args.baseline,
            args.whiten_advantages,
            exclude_current=args.single_step,
            terminal_rewards=args.external_reward_coef * external,
        )
        if args.teacher_mix_alpha > 0 and mode == "train":
            log_mix = torch.logaddexp(
                math.log(args.teacher_mix_alpha) + t_lp, math.log1p(-args.teacher_mix_alpha) + s_lp
            )
            ratio = (s_lp - log_mix).exp().clamp(max=args.importance_weight_clip)
            advantages = advantages * full(ratio)
            self._metrics[mode]["teacher_mix/importance_weight_mean"].append(
                ratio.mean().item() if ratio.numel() else 0.0
            )
        weights = self._token_importance_weights(rkl, t_entropy, s_entropy)
        if weights is not None:
            advantages = advantages * full(weights)
        if finite:
            finite = self.check_finite("the advantages", advantages[mask], _STUDENT_CAUSE)
        if not finite:  # nonfinite_policy='skip': this batch trains on no token, and its step is dropped
            advantages = torch.zeros_like(advantages)
            output["completion_mask"] = torch.zeros_like(output["completion_mask"])
            mask = torch.zeros_like(mask)
        output["advantages"] = advantages
        self._log_reward_none_counts(mode)

        n = max(int(mask.sum()), 1)
        metrics = self._metrics[mode]
        metrics["rewards/teacher_logprob/mean"].append(t_lp.sum().item() / n)
        metrics["rewards/token_reward/mean"].append(rewards.sum().item() / n)
        metrics["reverse_kl"].append(rkl.sum().item() / n)
        metrics["student_entropy"].append(s_entropy.sum().item() / n)
        valid = advantages[mask]
        if valid.numel():
            metrics["advantages/mean"].append(valid.mean().item())
            metrics["advantages/std"].append(valid.std().item() if valid.numel() > 1 else 0.0)
            metrics["advantages/min"].append(valid.min().item())
            metrics["advantages/max"].append(valid.max().item())
        if self.has_external_rewards:
            metrics["rewards/external/mean"].append(external.mean().item())
        return output

    def _log_reward_none_counts(self, mode: str) -> None:
        """``rewards/<name>/none``: how many completions each verifier declared not applicable (None) so far."""
        for func in self.reward_funcs:
            if isinstance(func, CheckedReward):
                self._metrics[mode][f"rewards/{func.__name__}/none"].append(float(func.none_count))

    def _external_rewards(self, n_local: int, device) -> torch.Tensor:
        """This process's rows of the verifiers' weighted reward sum (0 without verifiers; a verifier's None, counted
        in ``rewards/<name>/none``, adds 0; NaN and inf never get here, see :mod:`trl_opd.trainers.rewards`)."""
        if not self.has_external_rewards or self._last_rewards_per_func is None:
            return torch.zeros(n_local, device=device)
        start = self.accelerator.process_index * n_local
        rows = self._last_rewards_per_func[start : start + n_local].to(device)
        return (rows * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)

    def _drop_flawed_rollouts(self, output, mask, student_log_probs) -> torch.Tensor:
        """Boolean ``(B,)`` of rollouts the prefix filter rejects (all False without a filter)."""
        dropped = torch.zeros(mask.size(0), dtype=torch.bool, device=mask.device)
        if self.prefix_filter is None:
            return dropped
        lengths = mask.sum(1).tolist()
        completions = [row[m].tolist() for row, m in zip(output["completion_ids"], mask, strict=True)]
        log_probs = [chunk.tolist() for chunk in student_log_probs.split(lengths)]
        prompts = [row[m.bool()].tolist() for row, m in zip(output["prompt_ids"], output["prompt_mask"], strict=True)]
        reasons = self._flawed_prefix_reasons(prompts, completions, log_probs)
        dropped = torch.tensor([r is not None for r in reasons], device=mask.device)
        if dropped.all():
            logger.warning(
                "Every rollout of this batch was rejected as flawed: it trains on no token (logged as "
                "prefix_filter/rejected). Loosen the filter if this repeats."
            )
        return dropped

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        if not self.args.single_step:
            return loss
        # MiniLLM's single-step term: the exact reverse KL at each sampled prefix, differentiated directly.
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        k = inputs["completion_ids"].size(1)
        mask = inputs["completion_mask"].bool()
        student = self.accelerator.unwrap_model(model)
        s_hidden = last_hidden_states(student, ids, attention_mask, k)[mask]
        t_hidden = self.teacher.hidden_states(*teacher_view(inputs, ids, attention_mask), k)[mask]
        with gathered_heads(student, self.teacher.unwrapped):
            rkl = chunked_per_token_divergence(
                s_hidden,
                t_hidden,
                full_head(student),
                self.teacher.head,
                "rkl",
                temperature=self.temperature,
                vocab_size=self.vocab_size,
                teacher_top_k=self.teacher_top_k,
            )
        mode = "train" if self.model.training else "eval"
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        single_step = rkl.sum() / max(int(mask.sum()), 1) / accumulation
        self._metrics[mode]["single_step_reverse_kl"].append(single_step.item() * accumulation)
        return loss + self.args.single_step_coef * single_step
