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
    """

    compatibility_check: str = field(
        default="error", metadata={"help": "On a blocking teacher/student mismatch at init: 'error' or 'warn'."}
    )

    def __post_init__(self):
        if self.compatibility_check not in COMPATIBILITY_CHECKS:
            raise ValueError(
                f"compatibility_check must be one of {', '.join(map(repr, COMPATIBILITY_CHECKS))}, "
                f"got {self.compatibility_check!r}."
            )
        super().__post_init__()
