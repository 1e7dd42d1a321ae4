"""A privileged-context teacher (OPSD) for the distilling trainers: the config fields, and the trainer's side.

With ``privileged_teacher`` set (one of :data:`~trl_opd.teachers.privileged.SELF_TEACHER_KINDS`) the student is its
own teacher (:class:`~trl_opd.teachers.privileged.SelfTeacher`), and the teacher scores each completion after the
row's privileged prompt (:func:`~trl_opd.teachers.privileged.privileged_prompt`), aligned on the completion by
:func:`~trl_opd.teachers.alignment.teacher_view`. The student's prompt, sampling, divergence, λ-mixing, top-k and
hooks are those of the trainer, unchanged.

Data rules, checked before any compute on a map-style dataset (per generation batch on a streamed one):

* every row needs a non-empty ``privileged_context``: a row without one is **refused** (a teacher without the hint is
  the student itself, which teaches nothing), naming how many rows and the fix;
* a context that holds the row's dataset ``completion`` verbatim is **flagged**: a logged warning with the count (the
  teacher can copy it; with a one-token answer as the hint this is the intended set-up, so it is not refused).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..teachers.alignment import pad_teacher_prompts
from ..teachers.privileged import (
    DEFAULT_TEMPLATE,
    EMA_STATE_NAME,
    PRIVILEGED_COLUMN,
    SELF_TEACHER_KINDS,
    SelfTeacher,
    check_template,
    context_text,
    copies_completion,
    privileged_prompt,
)


logger = logging.getLogger(__name__)


@dataclass
class PrivilegedArguments:
    """Mixed into a trainer's config before the TRL config.

    Parameters:
        > Parameters that control a privileged-context (self-distillation) teacher

        privileged_teacher (`str`, *optional*):
            Train the student towards itself shown each row's `privileged_context` (OPSD; docs/self-distillation.md):
            `"base"` (its base weights, PEFT adapter disabled: no extra weights), `"frozen"` (a copy of its weights
            at step 0), `"live"` (its current weights, no gradient) or `"ema"` (an exponential moving average of its
            trained weights, checkpointed). Then no `teacher_model` is given. `None`: an ordinary teacher.
        privileged_ema_rate (`float`, *optional*, defaults to `0.05`):
            `ema` teacher: θ_T <- (1 - rate) θ_T + rate θ_S after each optimizer step (1.0 = the previous step's
            weights).
        privileged_template (`str`, *optional*, defaults to `"{prompt}\\n\\n{privileged_context}"`):
            How the context is placed in the last user turn of the teacher's prompt (TRL's SDFT default).
    """

    privileged_teacher: str | None = field(
        default=None,
        metadata={"help": f"Self-teacher shown `privileged_context`: one of {', '.join(SELF_TEACHER_KINDS)}."},
    )
    privileged_ema_rate: float = field(default=0.05, metadata={"help": "EMA rate of privileged_teacher='ema'."})
    privileged_template: str = field(
        default=DEFAULT_TEMPLATE, metadata={"help": "Template placing the context in the teacher's last user turn."}
    )

    def __post_init__(self):
        if self.privileged_teacher is not None and self.privileged_teacher not in SELF_TEACHER_KINDS:
            raise ValueError(
                f"privileged_teacher must be one of {', '.join(SELF_TEACHER_KINDS)} or None, got "
                f"{self.privileged_teacher!r}."
            )
        if not 0.0 < self.privileged_ema_rate <= 1.0:
            raise ValueError(f"privileged_ema_rate must be in (0, 1], got {self.privileged_ema_rate}.")
        check_template(self.privileged_template)
        super().__post_init__()


def check_privileged_rows(dataset, template: str = DEFAULT_TEMPLATE, column: str = PRIVILEGED_COLUMN) -> int:
    """Refuse rows without a privileged context, or whose prompt cannot take one (it ends with an assistant turn);
    return how many rows hold their completion verbatim (flagged)."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None and column not in columns:
        raise ValueError(
            f"privileged_teacher needs a `{column}` column (the hint the teacher sees); the dataset has {columns}."
        )
    if not hasattr(dataset, "__len__"):
        return 0  # a streamed dataset: checked per generation batch
    contexts = dataset[column]
    empty = [i for i, value in enumerate(contexts) if not context_text(value).strip()]
    if empty:
        raise ValueError(
            f"{len(empty)} of {len(contexts)} rows have an empty or missing `{column}` (first: row {empty[0]}). A "
            "teacher without the hint is the student itself; drop those rows (dataset.filter) or fill them in."
        )
    for i, (prompt, context) in enumerate(zip(dataset["prompt"], contexts, strict=True)):
        try:
            privileged_prompt(prompt, context, template)
        except ValueError as error:
            raise ValueError(f"Row {i}: {error}") from None
    if "completion" not in dataset.column_names:
        return 0
    copies = sum(copies_completion(c, y) for c, y in zip(contexts, dataset["completion"], strict=True))
    if copies:
        logger.warning(
            "%d of %d rows hold their completion verbatim in `%s`: the teacher can copy it (intended when the hint "
            "is the answer; otherwise the student learns to copy a context it never sees).",
            copies,
            len(contexts),
            column,
        )
    return copies


class _EMAStep(TrainerCallback):
    """Moves the EMA teacher after each optimizer step."""

    def __init__(self, teacher: SelfTeacher):
        self.teacher = teacher

    def on_step_end(self, args, state, control, **kwargs):
        self.teacher.ema.update(self.teacher.unwrapped)


class PrivilegedTeacherMixin:
    """The trainer's side of a privileged teacher: the dataset checks, the self-teacher, the teacher's prompts in each
    generation batch, and the EMA state in checkpoints. Inactive (every method defers) without
    ``args.privileged_teacher``."""

    privileged_verbatim_rows: int = 0

    @property
    def privileged_kind(self) -> str | None:
        return getattr(self.args, "privileged_teacher", None)

    @staticmethod
    def _check_privileged_setup(teacher_model, args, *, seq_kd: bool = False, eval_dataset=None) -> None:
        """What a privileged teacher cannot be combined with, and the evaluation rows' contexts (before any model is
        loaded; the training rows are checked with the teachers' row index)."""
        kind = getattr(args, "privileged_teacher", None)
        if kind is None:
            return
        evaluation = eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset]
        for dataset in (d for d in evaluation if d is not None):
            check_privileged_rows(dataset, args.privileged_template)  # the evaluation's teacher sees it too
        conflicts = {
            "teacher_model": teacher_model is not None,
            "teacher_cache": getattr(args, "teacher_cache", None) is not None,
            "seq_kd": seq_kd,
            "teacher_mix_alpha": getattr(args, "teacher_mix_alpha", 0.0) > 0,
        }
        given = [name for name, bad in conflicts.items() if bad]
        if given:
            raise ValueError(
                f"privileged_teacher={kind!r} makes the student its own teacher, shown the privileged context; it "
                f"cannot be combined with {', '.join(given)} (the teacher is not a separate model, and its targets "
                "depend on the context). Drop them, or drop privileged_teacher."
            )

    def _index_rows_for_teachers(self, train_dataset, args, teacher_model):
        if getattr(args, "privileged_teacher", None) is not None and train_dataset is not None:
            self.privileged_verbatim_rows = check_privileged_rows(train_dataset, args.privileged_template)
        return super()._index_rows_for_teachers(train_dataset, args, teacher_model)

    def _attach_teachers(self, loaded: dict, teacher_processing_class=None, run_backbone=None) -> None:
        if self.privileged_kind is not None:
            loaded = {"teacher": self.accelerator.unwrap_model(self.model)}
        super()._attach_teachers(loaded, teacher_processing_class, run_backbone)
        if self.privileged_kind == "ema":
            self.add_callback(_EMAStep(self.teacher))

    def _place_teacher(self, model, vocab_size: int, run_backbone=None):
        if self.privileged_kind is None:
            return super()._place_teacher(model, vocab_size, run_backbone)
        if self.privileged_kind in ("frozen", "ema") and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            raise ValueError(
                f"privileged_teacher={self.privileged_kind!r} copies the student's parameters, which DeepSpeed/FSDP "
                "shard across processes; use 'base' (LoRA) or 'live' there, or train on one process."
            )
        return SelfTeacher(
            self.privileged_kind,
            self.model,
            self.accelerator.unwrap_model(self.model),
            vocab_size,
            run_backbone,
            ema_rate=self.args.privileged_ema_rate,
        )

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if PRIVILEGED_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, PRIVILEGED_COLUMN]

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.privileged_kind is None:
            return output
        contexts = [row.get(PRIVILEGED_COLUMN) for row in inputs]
        empty = sum(not context_text(c).strip() for c in contexts)
        if empty:
            raise ValueError(
                f"{empty} rows of this batch have an empty or missing `{PRIVILEGED_COLUMN}`; privileged_teacher "
                "refuses them (drop them from the stream, or fill them in)."
            )
        template = self.args.privileged_template
        prompts = [privileged_prompt(row["prompt"], c, template) for row, c in zip(inputs, contexts, strict=True)]
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]  # a defaultdict: a key read here would be logged (as None) when empty
        counted = len(metrics.get("prompts/truncated", []))
        prompt_ids, _, _ = self._tokenize_prompts(prompts)  # the student's own prompt checks (max_prompt_length)
        if len(metrics.get("prompts/truncated", [])) > counted:  # the teacher's truncations are counted apart
            metrics["privileged/prompts_truncated"].append(metrics["prompts/truncated"].pop())
        output.update(pad_teacher_prompts(prompt_ids, self._tokenizer.pad_token_id, self.accelerator.device))
        extra = [len(t) - int(s.sum()) for t, s in zip(prompt_ids, output["prompt_mask"], strict=True)]
        self._metrics[mode]["privileged/extra_prompt_tokens"].append(sum(extra) / len(extra))
        return output

    def _ema_state_path(self, folder: str) -> str:
        return os.path.join(folder, EMA_STATE_NAME)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.privileged_kind != "ema" or not self.accelerator.is_main_process:
            return
        import torch

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        torch.save(self.teacher.ema.state_dict(), self._ema_state_path(folder))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.privileged_kind != "ema":
            return
        import torch

        path = self._ema_state_path(resume_from_checkpoint)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{resume_from_checkpoint} has no {EMA_STATE_NAME}: it was not saved by a run with "
                "privileged_teacher='ema'. Resume with the settings of the saved run."
            )
        self.teacher.ema.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
