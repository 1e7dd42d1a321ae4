"""The set-up shared by the trainers that distil from a teacher (GKD, MiniLLM), as a short sequence of named steps.

A trainer subclasses :class:`DistillationSetUp` before its TRL base class and builds itself in three calls::

    args = resolve_args(args, MyConfig, "my-output")
    setup = self._set_up_before_base(model, processing_class, teacher_model, args, train_dataset, eval_dataset,
                                     completions=Completions(...), hooks=dict(token_importance=..., ...))
    super().__init__(model=model, args=args, train_dataset=setup.train_dataset, eval_dataset=setup.eval_dataset, ...)
    self._set_up_after_base(setup, teacher_processing_class)

Before the base ``__init__`` (nothing is loaded by TRL yet, so mistakes are refused before any compute):

1. ``_check_student_inputs``: a tokenizer for the student (either padding side: TRL left-pads prompts);
2. ``_prepare_datasets``: the columns of both datasets checked, ``messages`` converted, empty completions dropped;
3. ``_init_hooks``: TIP, the prefix filter, the curriculum (it indexes the dataset);
4. ``_index_rows_for_teachers``: the cache's row index and the ``teacher_id`` column;
5. ``_load_teachers``: TRL's own teacher handling would refuse heads padded to different sizes.

After it:

6. ``_attach_teachers``: compatibility checks, placement, the cache, the run's top-k;
7. ``_init_finite_guard``: the non-finite guard's callback.

What is the trainer's own (GKD's mixing, MiniLLM's rewards and reference) comes before or after these calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data import prepare_prompt_completion_dataset
from ..models import check_processing_class
from .guard import FiniteGuardMixin
from .hooked import HookedTrainerMixin
from .privileged import PrivilegedTeacherMixin
from .prompts import PromptLengthMixin
from .resume import ExactResumeMixin
from .teacher_mixin import TeacherMixin


@dataclass(frozen=True)
class Completions:
    """Whether each dataset needs a ``completion`` column, and the trainer's advice when one is missing."""

    train: bool = False
    eval: bool = False
    train_hint: str = ""
    eval_hint: str = ""


@dataclass
class SetUp:
    """What the steps before the base ``__init__`` hand to it and to the steps after it."""

    train_dataset: Any
    eval_dataset: Any
    teachers: dict


class DistillationSetUp(
    PrivilegedTeacherMixin, TeacherMixin, HookedTrainerMixin, FiniteGuardMixin, ExactResumeMixin, PromptLengthMixin
):
    """The behaviour every distilling trainer shares (teachers, hooks, the non-finite guard, exact resume, prompt
    lengths; see each mixin) and the set-up lifecycle of the module docstring."""

    def _set_up_before_base(
        self,
        model,
        processing_class,
        teacher_model,
        args,
        train_dataset,
        eval_dataset,
        *,
        completions: Completions,
        hooks: dict,
    ) -> SetUp:
        """Steps 1-5: check, prepare, hook and index the data, and load the teachers."""
        self._check_student_inputs(model, processing_class)
        train_dataset, eval_dataset = self._prepare_datasets(train_dataset, eval_dataset, completions)
        train_dataset = self._init_hooks(train_dataset, **hooks)
        train_dataset = self._index_rows_for_teachers(train_dataset, args, teacher_model)
        return SetUp(train_dataset, eval_dataset, self._load_teachers(teacher_model, args))

    def _set_up_after_base(self, setup: SetUp, teacher_processing_class=None, run_backbone=None) -> None:
        """Steps 6-7: attach the teachers to this trainer's accelerator and start the non-finite guard."""
        self._attach_teachers(setup.teachers, teacher_processing_class, run_backbone=run_backbone)
        self._init_finite_guard()

    @staticmethod
    def _check_student_inputs(model, processing_class) -> None:
        check_processing_class(model, processing_class)  # any padding side: TRL left-pads prompts itself

    @staticmethod
    def _prepare_datasets(train_dataset, eval_dataset, completions: Completions) -> tuple:
        train = prepare_prompt_completion_dataset(
            train_dataset, "train_dataset", completions.train, completions.train_hint
        )
        evaluation = prepare_prompt_completion_dataset(
            eval_dataset, "eval_dataset", completions.eval, completions.eval_hint
        )
        return train, evaluation
