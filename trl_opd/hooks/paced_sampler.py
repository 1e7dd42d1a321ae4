"""The sampler of a :class:`~trl_opd.hooks.PacedCurriculum`: TRL's ``RepeatSampler`` layout, drawn lazily."""

from __future__ import annotations

from typing import Iterator, Protocol

from torch.utils.data import Sampler


class BatchSource(Protocol):
    """What the sampler draws from: a :class:`~trl_opd.hooks.PacedCurriculum` bound to its dataset."""

    num_examples: int | None

    def next_batch(self, batch_size: int) -> list[int]:
        """The indices of the next generation batch (``batch_size`` distinct examples)."""


class PacedSampler(Sampler[int]):
    """RepeatSampler-layout sampler over a :class:`PacedCurriculum` (create it with :meth:`PacedCurriculum.sampler`).

    One iteration ("epoch") yields ``num_examples // batch_size`` generation batches; each is drawn lazily, when its
    first index is requested, from the curriculum's state at that moment, then yielded as::

        for _ in range(repeat_count):
            for index in batch:              # batch_size distinct indices
                for _ in range(mini_repeat_count):
                    yield index

    ``len(sampler) = (num_examples // batch_size) · batch_size · mini_repeat_count · repeat_count``. Every drawn batch
    advances the curriculum's generator and warm-up clock; there is no per-epoch reseeding (``set_epoch`` is a no-op).
    """

    def __init__(
        self,
        curriculum: BatchSource,
        batch_size: int,
        repeat_count: int = 1,
        mini_repeat_count: int = 1,
        seed: int = 0,
    ):
        self.curriculum = curriculum
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.mini_repeat_count = mini_repeat_count
        self.seed = seed

    @property
    def num_batches(self) -> int:
        """Generation batches per iteration: ``num_examples // batch_size``."""
        return self.curriculum.num_examples // self.batch_size

    def __iter__(self) -> Iterator[int]:
        for _ in range(self.num_batches):
            batch = self.curriculum.next_batch(self.batch_size)
            for _ in range(self.repeat_count):
                for index in batch:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        return self.num_batches * self.batch_size * self.mini_repeat_count * self.repeat_count

    def set_epoch(self, epoch: int) -> None:
        """No-op (accepted for the Trainer/accelerate): the draw sequence continues across epochs."""

    def __repr__(self) -> str:
        return (
            f"PacedSampler(batch_size={self.batch_size}, repeat_count={self.repeat_count}, "
            f"mini_repeat_count={self.mini_repeat_count}, num_batches={self.num_batches})"
        )
