"""Exact resume: a run killed after a checkpoint and resumed samples, mixes and trains exactly as the straight run.

Three pieces of state are not where ``transformers.Trainer`` (5.x) puts them back:

* **The random generators.** Creating a dataloader iterator draws from the global torch generator. A run resumed
  inside an epoch creates one the straight run did not create there, so its generators are restored at its first
  training step, the point at which the straight run had exactly the saved state (the checkpoint is written after
  the optimizer step, and the next step draws nothing before it generates). A run resumed at an epoch boundary
  restores them before the epoch's iterator is created, as the straight run drew for its own iterator there.
* **The sampler's epoch.** TRL's ``RepeatSampler`` draws one permutation per pass from its own generator, seeded once.
  The straight run's epoch ``e`` uses the ``e``-th permutation; a resumed run builds a fresh sampler and, without
  help, would use the first one again (measured: the data order, then the weights, diverged from the first epoch
  boundary on). Before a resumed run iterates, the sampler's generator is advanced by the ``e`` passes the straight
  run made (:meth:`ExactResumeMixin._position_sampler`). The PACED curriculum's sampler restores its draw state from
  the checkpoint; the resumed epoch keeps the straight run's layout (the dataloader skips the batches trained before
  the checkpoint, which the sampler yields as placeholders without drawing), so later epochs start where they did.
* **A finished run.** Resuming from a checkpoint at ``max_steps`` made the Trainer train one step more (3 -> 4 -> 5
  on each rerun). Such a resume now trains nothing: the checkpoint's weights are the run's result.
"""

from __future__ import annotations

import logging

import torch


logger = logging.getLogger(__name__)


class ExactResumeMixin:
    """Defers ``Trainer._load_rng_state`` to the first ``training_step`` after a resume, replays the sampler's epochs,
    and trains nothing when the checkpoint already reached ``max_steps``."""

    _rng_checkpoint: str | None = None
    _resumed_finished: bool = False
    _restore_rng_now: bool = False
    _train_sampler = None

    def _load_rng_state(self, checkpoint):
        if self._restore_rng_now:  # at an epoch boundary: before the epoch's iterator draws, as in the straight run
            self._restore_rng_now = False
            super()._load_rng_state(checkpoint)
        else:
            self._rng_checkpoint = checkpoint

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._rng_checkpoint is not None:
            checkpoint, self._rng_checkpoint = self._rng_checkpoint, None
            super()._load_rng_state(checkpoint)
        return super().training_step(model, inputs, num_items_in_batch)

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        self._train_sampler = sampler
        return sampler

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial):  # fmt: skip
        epochs_trained, steps_in_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        self._resumed_finished = resume_from_checkpoint is not None and self.state.global_step >= max_steps > 0
        if self._resumed_finished:
            logger.warning("%s is at step %d of max_steps=%d: the run is finished, nothing is trained.",
                           resume_from_checkpoint, self.state.global_step, max_steps)  # fmt: skip
        elif resume_from_checkpoint is not None:
            self._restore_rng_now = steps_in_epoch == 0
            self._position_sampler(epochs_trained, steps_in_epoch // self.args.gradient_accumulation_steps)
        return epochs_trained, steps_in_epoch

    def _position_sampler(self, epochs: int, steps: int) -> None:
        """Put the train sampler where the straight run's was when it started the resumed epoch's step ``steps``.

        A sampler that restores its own draw state from the checkpoint (the PACED curriculum's: ``skip_batches``)
        yields placeholders for the ``steps`` generation batches the dataloader skips. TRL's ``RepeatSampler``
        has its generator advanced by ``epochs`` passes (one permutation is drawn per pass, when its iterator starts).
        """
        sampler = self._train_sampler
        if hasattr(sampler, "skip_batches"):
            sampler.skip_batches(steps)
            return
        if epochs <= 0 or not isinstance(getattr(sampler, "generator", None), torch.Generator):
            return
        for _ in range(epochs):
            next(iter(sampler), None)

    def _run_epoch(self, *args, **kwargs):
        if self._resumed_finished:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)
