"""Config fields about the teacher, shared by the configs of the trainers that distil from one (GKD, MiniLLM)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..compatibility import COMPATIBILITY_CHECKS
from ..divergences.registry import check_top_k
from ..sharding import PLACEMENTS


logger = logging.getLogger(__name__)

#: Gradient cosine of the top-64 + tail reverse KL against the full vocabulary, measured on the SmolLM2 pair
#: (``bench/teacher_topk.py``, docs/teacher.md): FKL keeps 0.98 of its direction, RKL only 0.52.
TOPK_RKL_GRADIENT_COSINE = 0.52


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
        teacher_placement (`str`, *optional*, defaults to `"sharded"`):
            Where a live teacher lives in a multi-GPU run ([`trl_opd.sharding.prepare_frozen`], docs/multi-gpu.md):
            `"sharded"` partitions it like the student under DeepSpeed ZeRO-3 and FSDP2 (a teacher larger than one
            GPU fits); `"replica"` keeps a full copy on every rank (FSDP2 only; TRL's choice, no all-gather per
            forward). DDP and ZeRO-1/2 always replicate the teacher.
        teacher_server_timeout (`float`, *optional*, defaults to `120.0`):
            Seconds one request to a teacher on a vLLM server (`teacher_model="http://host:port"`) may take.
        teacher_server_retries (`int`, *optional*, defaults to `2`):
            How many times a request to a teacher server that failed (connection refused, timeout, HTTP 429/5xx) is
            sent again, with a doubling back-off from 1 s, before training stops with an error naming the server.
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

    teacher_placement: str = field(
        default="sharded",
        metadata={"help": "Multi-GPU placement of a live teacher: 'sharded' (ZeRO-3, FSDP2) or 'replica' (FSDP2)."},
    )
    teacher_server_timeout: float = field(
        default=120.0, metadata={"help": "Seconds one request to a teacher server may take."}
    )
    teacher_server_retries: int = field(
        default=2, metadata={"help": "Retries of a failed request to a teacher server before training stops."}
    )

    def __post_init__(self):
        if self.teacher_placement not in PLACEMENTS:
            raise ValueError(
                f"teacher_placement must be one of {', '.join(map(repr, PLACEMENTS))}, got {self.teacher_placement!r}."
            )
        if self.teacher_server_timeout <= 0 or self.teacher_server_retries < 0:
            raise ValueError(
                f"teacher_server_timeout must be > 0 and teacher_server_retries >= 0, got "
                f"{self.teacher_server_timeout} and {self.teacher_server_retries}."
            )
        if self.compatibility_check not in COMPATIBILITY_CHECKS:
            raise ValueError(
                f"compatibility_check must be one of {', '.join(map(repr, COMPATIBILITY_CHECKS))}, "
                f"got {self.compatibility_check!r}."
            )
        check_top_k(self.teacher_top_k)
        super().__post_init__()

    def top_k_objective(self) -> tuple[float, str]:
        """``(share, what)``: how much of this trainer's objective is reverse KL (the divergence registry's
        :func:`~trl_opd.divergences.reverse_kl_share`), and a phrase naming that objective. Overridden per config."""
        return 0.0, "this objective"

    def warn_if_top_k_is_unsafe(self, teacher_top_k: int | None) -> None:
        """:func:`warn_if_top_k_is_unsafe` for this config's objective at ``teacher_top_k``: the config calls it with
        its own value, the trainer with the k a teacher cache brings when the config left it unset."""
        share, what = self.top_k_objective()
        warn_if_top_k_is_unsafe(teacher_top_k, share, what)


def warn_if_top_k_is_unsafe(teacher_top_k: int | None, reverse_kl_weight: float, what: str) -> None:
    """Warn when a top-k + tail teacher feeds a reverse-KL-like objective, whose gradient top-k bins distort.

    ``reverse_kl_weight`` is how much of the objective is reverse KL: 1 for RKL, β for the generalized JSD (β = 1 is
    RKL), 0 for FKL and TVD. The measured gradient cosine at k = 64 falls from 0.98 (FKL) to 0.52 (RKL).
    """
    if teacher_top_k is None or reverse_kl_weight <= 0.5:
        return
    logger.warning(
        "teacher_top_k=%d with %s: on top-k + tail bins the reverse KL loses the order of the student's mass outside "
        "the teacher's top k (measured gradient cosine %.2f against the full vocabulary at k = 64, against 0.98 for "
        "FKL; docs/teacher.md). Prefer divergence='fkl' (or JSD with beta <= 0.5) with top-k, or teacher_top_k=None.",
        teacher_top_k,
        what,
        TOPK_RKL_GRADIENT_COSINE,
    )
