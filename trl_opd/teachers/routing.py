r"""Which teacher scores which loss token: one or several live teachers (routed per row), and an offline cache.

A :class:`TeacherSet` turns a micro-batch into :class:`TeacherSide` records, one per source: the rows whose targets
come from the cache, and for each live teacher the rows routed to it (the ``teacher_id`` column, when several
teachers are given as a mapping). Each side names the loss tokens it covers (their positions in the row-major order of
the micro-batch's loss mask) and carries what the chunked engine needs for them: the teacher's hidden states and head
(reduced to top-k per chunk when ``top_k`` is set), or precomputed top-k targets. The loss is the sum over sides, so
a teacher runs its forward pass only on its own rows, and a cached row costs no forward pass at all.

Another backend (a teacher behind a server returning ``prompt_logprobs``) is one more kind of side: an object with
``targets(input_ids, attention_mask, logits_to_keep, loss_mask) -> TopKTargets`` for its rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..divergences import LMHead
from ..divergences.topk import TopKTargets
from .cache import TeacherCache
from .live import Teacher


TEACHER_ID_COLUMN = "teacher_id"
CACHE_ROW_COLUMN = "teacher_cache_row"


def check_teacher_ids(values, ids) -> None:
    """Refuse ``teacher_id`` values that name no given teacher, naming them and the teachers given."""
    ids = [str(i) for i in ids]
    unknown = sorted({str(v) for v in values} - set(ids))
    if unknown:
        raise ValueError(
            f"The `{TEACHER_ID_COLUMN}` column names teachers that were not given: {', '.join(map(repr, unknown))} "
            f"(given: {', '.join(ids)}). Fix the column or add them to teacher_model."
        )


class NamedTeachers(dict):
    """Teachers given as a mapping ``{id: model}``: each row's ``teacher_id`` must name one of them, also when there is
    only one (a row meant for a teacher that was not given is refused, never sent to the one that was)."""


@dataclass
class TeacherSide:
    """The teacher of some of a micro-batch's loss tokens.

    Attributes:
        label: the teacher's id, or ``"cache"``.
        positions: ``(n,)`` indices of these tokens in the row-major order of the micro-batch's loss mask.
        hidden, head: the teacher's hidden states at these tokens and its head (a live teacher).
        targets: precomputed top-k targets of these tokens (the cache).
    """

    label: str
    positions: torch.Tensor
    hidden: torch.Tensor | None = None
    head: LMHead | None = None
    targets: TopKTargets | None = None

    @property
    def teacher(self):
        """What the chunked engine takes as the teacher (hidden states, or top-k targets)."""
        return self.targets if self.targets is not None else self.hidden


class TeacherSet:
    """The live teachers (by id) and the optional cache of a trainer.

    Args:
        teachers: ``{id: Teacher}``; one teacher is the common case (its id is ``"teacher"``).
        cache: a :class:`~trl_opd.teachers.cache.TeacherCache` serving off-policy rows, or ``None``.
        named: the teachers were given as a mapping: a row's ``teacher_id`` must name one of them (also one alone).
    """

    def __init__(self, teachers: Mapping[str, Teacher], cache: TeacherCache | None = None, named: bool = False):
        self.teachers, self.cache, self.named = dict(teachers), cache, named or len(teachers) > 1
        if not self.teachers and cache is None:
            raise ValueError("A distillation trainer needs a teacher: a model, a mapping of models, or a cache.")

    @property
    def ids(self) -> list[str]:
        return list(self.teachers)

    @property
    def routed(self) -> bool:
        """Whether rows choose their teacher (several teachers)."""
        return len(self.teachers) > 1

    def index_of(self, row: dict) -> int:
        """The index (in :attr:`ids`) of the teacher that scores ``row``; an unknown id is refused, naming it."""
        if not self.routed:
            if self.named and TEACHER_ID_COLUMN in row:
                check_teacher_ids([row[TEACHER_ID_COLUMN]], self.ids)
            return 0
        if TEACHER_ID_COLUMN not in row:
            raise ValueError(
                f"Several teachers were given ({', '.join(self.ids)}), so every row needs a `{TEACHER_ID_COLUMN}` "
                f"column naming its teacher; this row has {sorted(row)}."
            )
        check_teacher_ids([row[TEACHER_ID_COLUMN]], self.ids)
        return self.ids.index(str(row[TEACHER_ID_COLUMN]))

    @torch.no_grad()
    def sides(
        self, input_ids, attention_mask, logits_to_keep: int, loss_mask, teacher_index=None, cache_rows=None
    ) -> list[TeacherSide]:
        """The sides of one micro-batch (``teacher_index`` and ``cache_rows``: ``(B,)``, -1 = not from the cache)."""
        batch = input_ids.shape[0]
        token_rows = loss_mask.nonzero()[:, 0]  # the row of each loss token, row-major
        positions_of = {}
        for row in range(batch):
            positions_of[row] = (token_rows == row).nonzero().squeeze(-1)
        cached = [] if cache_rows is None else [r for r in range(batch) if int(cache_rows[r]) >= 0]
        sides = []
        if cached:
            parts = self.cache.targets([int(cache_rows[r]) for r in cached])
            sides.append(
                TeacherSide(
                    "cache",
                    torch.cat([positions_of[r] for r in cached]),
                    targets=TopKTargets.cat(parts).to(loss_mask.device),
                )
            )
        for index, (label, teacher) in enumerate(self.teachers.items()):
            rows = [
                r for r in range(batch) if r not in cached and (teacher_index is None or int(teacher_index[r]) == index)
            ]
            rows = [r for r in rows if positions_of[r].numel()]
            if not rows:
                continue
            if teacher.head is None:  # a teacher behind a server: top-k targets of its rows
                select = torch.tensor(rows, device=input_ids.device)
                targets = teacher.targets(input_ids[select], attention_mask[select], logits_to_keep, loss_mask[select])
                sides.append(TeacherSide(label, torch.cat([positions_of[r] for r in rows]), targets=targets))
                continue
            if len(rows) == batch:  # the common case: one teacher scores the whole micro-batch
                hidden = teacher.hidden_states(input_ids, attention_mask, logits_to_keep)[loss_mask]
                sides.append(
                    TeacherSide(label, torch.arange(token_rows.numel(), device=loss_mask.device), hidden, teacher.head)
                )
                continue
            select = torch.tensor(rows, device=input_ids.device)
            hidden = teacher.hidden_states(input_ids[select], attention_mask[select], logits_to_keep)
            sides.append(
                TeacherSide(label, torch.cat([positions_of[r] for r in rows]), hidden[loss_mask[select]], teacher.head)
            )
        covered = sum(side.positions.numel() for side in sides)
        if covered != token_rows.numel():
            raise RuntimeError(
                f"{token_rows.numel() - covered} loss tokens have no teacher: rows off the cache need a live teacher "
                "(pass teacher_model, or keep every row off-policy with lmbda=0.0)."
            )
        return sides
