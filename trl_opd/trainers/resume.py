"""Exact resume: a run killed after a checkpoint and resumed samples, mixes and trains exactly as the straight run.

``transformers.Trainer`` restores the random-number generators of a checkpoint when the resumed epoch starts, before
the dataloader's iterator is created; creating it draws from the global torch generator, so every later sample (the
student's rollouts, TRL's shuffle of the generation batch) differs from the straight run's. :class:`ExactResumeMixin`
restores them at the first training step of the resumed run instead, the point at which the straight run had exactly
the saved state (the checkpoint is written after the optimizer step, and the next step draws nothing before it
generates).
"""

from __future__ import annotations


class ExactResumeMixin:
    """Defers ``Trainer._load_rng_state`` to the first ``training_step`` after a resume."""

    _rng_checkpoint: str | None = None

    def _load_rng_state(self, checkpoint):
        self._rng_checkpoint = checkpoint

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._rng_checkpoint is not None:
            checkpoint, self._rng_checkpoint = self._rng_checkpoint, None
            super()._load_rng_state(checkpoint)
        return super().training_step(model, inputs, num_items_in_batch)
