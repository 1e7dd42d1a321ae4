"""Config fields about the teacher, shared by the configs of the trainers that distil from one (GKD, MiniLLM)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..compatibility import COMPATIBILITY_CHECKS


@dataclass
class TeacherArguments:
    """Mixed into a trainer's config before the TRL config.

    Parameters:
        > Parameters that control the teacher

        compatibility_check (`str`, *optional*, defaults to `"error"`):
            What a blocking teacher/student mismatch found at init does (a different tokenizer, chat template or EOS
            id, heads that cannot cover the tokenizer; see [`trl_opd.compatibility`]): `"error"` refuses to train,
            naming the fix; `"warn"` logs it and trains anyway.
        teacher_top_k (`int`, *optional*):
            Compute the divergence exactly on the teacher's k most likely tokens and one tail bin holding the rest of
            the mass, for both models ([`trl_opd.divergences.topk`]); `None` is the full vocabulary. FKL, RKL, JSD and
            TVD on the bins are lower bounds of the full ones.
        teacher_cache (`str`, *optional*):
            A folder written by `trl_opd.build_teacher_cache` / `trl-opd cache-teacher`: rows trained on their dataset
            completion take the teacher's top-k targets from it (no teacher forward pass); with `lmbda=0.0` no teacher
            needs to be loaded at all. Its `top_k` is the run's `teacher_top_k`.
    """

    compatibility_check: str = field(
        default="error", metadata={"help": "On a blocking teacher/student mismatch at init: 'error' or 'warn'."}
    )
    teacher_top_k: int | None = field(
        default=None,
        metadata={"help": "Divergence on the teacher's top-k tokens + a tail bin (default: the full vocabulary)."},
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={"help": "Folder of an offline teacher cache serving the rows trained on dataset completions."},
    )

    def __post_init__(self):
        if self.compatibility_check not in COMPATIBILITY_CHECKS:
            raise ValueError(
                f"compatibility_check must be one of {', '.join(map(repr, COMPATIBILITY_CHECKS))}, "
                f"got {self.compatibility_check!r}."
            )
        if self.teacher_top_k is not None and self.teacher_top_k < 1:
            raise ValueError(f"teacher_top_k must be >= 1 or None (the full vocabulary), got {self.teacher_top_k}.")
        super().__post_init__()
