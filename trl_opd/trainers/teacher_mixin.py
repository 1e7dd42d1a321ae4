"""The teacher plumbing shared by the trainers that distil from one (GKD, MiniLLM).

A trainer mixes :class:`TeacherMixin` in before its TRL base class, loads the teacher with :func:`trl_opd.models.
load_teacher` before the base ``__init__`` (TRL's own teacher handling would refuse heads padded to different sizes),
and calls :meth:`_attach_teacher` after it. The mixin then holds ``self.teacher`` (a :class:`trl_opd.teachers.
Teacher`), ``self.teacher_model`` (the prepared model, as in TRL's trainers) and ``self.vocab_size`` (the shared
vocabulary), and offers the student's head and the public evaluation helpers.
"""

from __future__ import annotations

from ..compatibility import check_compatibility
from ..divergences import LMHead
from ..evaluation import guards
from ..models import disable_bnb_cpu_weight_repacking
from ..teachers import Teacher


class TeacherMixin:
    """``self.teacher``, ``self.teacher_model``, ``self.vocab_size``; the student's head; prompt ids; guards."""

    teacher: Teacher

    def _attach_teacher(self, teacher_model, teacher_tokenizer=None, run_backbone=None) -> None:
        """Check the teacher against the student (:func:`trl_opd.compatibility.check_compatibility`, raising or
        warning per ``args.compatibility_check``), suppress the student's ids that are no token in its generation, and
        place the teacher with this trainer's accelerator (after the base ``__init__``)."""
        student = self.accelerator.unwrap_model(self.model)
        report = check_compatibility(student, teacher_model, self._text_tokenizer, teacher_tokenizer)
        report.raise_or_warn(getattr(self.args, "compatibility_check", "error"))
        self.compatibility = report
        self._suppress_in_generation(report.suppressed_ids)
        self.teacher = Teacher.prepare(
            teacher_model,
            report.shared_vocab_size,
            self.accelerator,
            deepspeed=self.is_deepspeed_enabled,
            run_backbone=run_backbone,
        )
        self.teacher_model = self.teacher.model
        self.vocab_size = self.teacher.vocab_size
        disable_bnb_cpu_weight_repacking(self.model)

    def _suppress_in_generation(self, token_ids: list[int]) -> None:
        """Never sample ``token_ids`` (student head rows past the tokenizer, which the teacher may lack)."""
        if not token_ids:
            return
        if getattr(self.args, "use_vllm", False):
            raise ValueError(
                f"The student head has {len(token_ids)} rows past the tokenizer (ids {token_ids[0]}..{token_ids[-1]}) "
                "that vLLM could sample; trl-opd suppresses them in transformers' generate only. Train with "
                "use_vllm=False, or resize the student's head to the tokenizer (model.resize_token_embeddings)."
            )
        suppressed = sorted(set(self.generation_kwargs.get("suppress_tokens") or []) | set(token_ids))
        self.generation_kwargs["suppress_tokens"] = suppressed
        self.generation_config.suppress_tokens = suppressed

    @property
    def _text_tokenizer(self):
        return getattr(self.processing_class, "tokenizer", self.processing_class)

    @property
    def student_head(self) -> LMHead:
        """The student's head (its gradient flows)."""
        return LMHead.of(self.accelerator.unwrap_model(self.model))

    def prompt_token_ids(self, prompts: list) -> list[list[int]]:
        """Token ids of ``prompts`` (text or messages) exactly as this trainer tokenizes them for generation."""
        prompt_ids, _, _ = self._tokenize_prompts(list(prompts))
        return [list(ids) for ids in prompt_ids]

    def sample_guards(self, dataset, max_new_tokens: int | None = None) -> dict[str, float]:
        """The collapse guards (:func:`trl_opd.evaluation.guards`) of this trainer's student and teacher on the
        prompts of ``dataset``, sampled like training (temperature, ``max_completion_length``)."""
        tokenizer = self._text_tokenizer
        return guards(
            self.accelerator.unwrap_model(self.model),
            self.teacher.unwrapped,
            self.prompt_token_ids(dataset["prompt"]),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_ids=list(self.eos_token_ids),
            max_new_tokens=max_new_tokens or self.max_completion_length,
            temperature=self.temperature,
            vocab_size=self.vocab_size,
        )
