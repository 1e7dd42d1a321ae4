"""λ-mixing: which rows of a generation batch the student samples, and the record of the batch being built."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def on_policy_mask(
    n_local: int, lmbda: float, seed: int, step: int, process_index: int, num_processes: int
) -> list[bool]:
    """Per-row coin flips, True = on-policy with probability ``lmbda``.

    The flips depend only on ``(seed, step)``: every process draws the whole global batch of ``n_local ·
    num_processes`` flips and keeps its own slice, so the assignment is identical across processes and reruns.
    """
    if lmbda >= 1.0:
        return [True] * n_local
    if lmbda <= 0.0:
        return [False] * n_local
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    draws = torch.rand(n_local * num_processes, generator=generator)
    mine = draws[process_index * n_local : (process_index + 1) * n_local]
    return (mine < lmbda).tolist()


@dataclass
class MixedBatch:
    """The generation batch being built: its dataset rows, which of them the student samples (``on_policy``), and
    which sampled rollouts the flawed-prefix filter dropped from the loss (``dropped``), and which off-policy rows the
    teacher cache serves (``cache_rows``: the cache's row, -1 for a live teacher)."""

    rows: list[dict]
    on_policy: list[bool]
    dropped: list[bool] = field(default_factory=list)
    cache_rows: list[int] = field(default_factory=list)  # the teacher cache's row serving each row (-1: none)

    def __post_init__(self):
        if not self.dropped:
            self.dropped = [False] * len(self.rows)
        if not self.cache_rows:
            self.cache_rows = [-1] * len(self.rows)
        if not len(self.rows) == len(self.on_policy) == len(self.dropped):
            raise ValueError("rows, on_policy and dropped must have one entry per row.")

    @property
    def sampled(self) -> list[int]:
        """Indices of the rows the student samples."""
        return [i for i, flag in enumerate(self.on_policy) if flag]

    @property
    def off_policy(self) -> list[int]:
        """Indices of the rows trained on a dataset (or teacher) completion."""
        return [i for i, flag in enumerate(self.on_policy) if not flag]

    def train_off_policy(self, i: int) -> None:
        """Row ``i`` falls back to its dataset completion (and is trained)."""
        self.on_policy[i], self.dropped[i] = False, False

    def drop(self, i: int) -> None:
        """Row ``i`` stays in the batch with no token trained on."""
        self.dropped[i] = True

    @property
    def any_dropped(self) -> bool:
        return any(self.dropped)
