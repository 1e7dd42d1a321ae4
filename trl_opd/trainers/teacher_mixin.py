"""The teacher plumbing shared by the trainers that distil from one (GKD, MiniLLM).

A trainer mixes :class:`TeacherMixin` in before its TRL base class, loads the teacher with :func:`trl_opd.models.
load_teacher` before the base ``__init__`` (TRL's own teacher handling would refuse heads padded to different sizes),
and calls :meth:`_attach_teacher` after it. The mixin then holds ``self.teacher`` (a :class:`trl_opd.teachers.
Teacher`), ``self.teacher_model`` (the prepared model, as in TRL's trainers) and ``self.vocab_size`` (the shared
vocabulary), and offers the student's head and the public evaluation helpers.
"""

from __future__ import annotations

from ..divergences import LMHead
from ..evaluation import guards
from ..models import disable_bnb_cpu_weight_repacking
from ..teachers import Teacher


class TeacherMixin:
    """``self.teacher``, ``self.teacher_model``, ``self.vocab_size``; the student's head; prompt ids; guards."""

    teacher: Teacher

    def _attach_teacher(self, teacher_model, run_backbone=None) -> None:
        """Prepare the loaded teacher for this trainer's accelerator (after the base ``__init__``)."""
        self.teacher = Teacher.prepare(
            teacher_model, self.model, self._text_tokenizer, self.accelerator,
            deepspeed=self.is_deepspeed_enabled, run_backbone=run_backbone,
        )  # fmt: skip
        self.teacher_model = self.teacher.model
        self.vocab_size = self.teacher.vocab_size
        disable_bnb_cpu_weight_repacking(self.model)

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
