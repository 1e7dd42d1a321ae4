"""One round's DPO run: ``trl.DPOTrainer`` with the non-finite guard (:mod:`trl_opd.trainers.guard`)."""

from __future__ import annotations

from trl import DPOTrainer

from ..guard import FiniteGuardMixin
from ..resume import ExactResumeMixin


class SPINRoundTrainer(FiniteGuardMixin, ExactResumeMixin, DPOTrainer):
    """``trl.DPOTrainer`` whose losses and gradients are checked before each optimizer step, whose checkpoints refuse
    non-finite weights (``nonfinite_policy`` / ``max_nonfinite_skips`` of [`SPINConfig`]), and whose resume restores
    the random state where the straight run had it (:mod:`trl_opd.trainers.resume`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_finite_guard()
