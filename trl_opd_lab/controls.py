"""Controls for the lab's experiments: hooks that keep the package's mechanics and remove the idea under test."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trl_opd.hooks import TokenImportance


@dataclass
class RandomTokenImportance(TokenImportance):
    """The TIP control: ``top_fraction`` on uniform random scores, so the same share of each micro-batch's tokens is
    kept as by TokenImportance, chosen at random (a generator seeded with ``seed``) instead of by importance."""

    mode: str = "top_fraction"
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        self.generator = torch.Generator().manual_seed(self.seed)

    def scores(self, divergence, teacher_entropy, student_entropy, vocab_size):
        return torch.rand(divergence.shape, generator=self.generator).to(divergence.device)
