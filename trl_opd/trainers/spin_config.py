"""``trl_opd.trainers.spin_config.SPINConfig`` (the 0.1 import path): the config lives in :mod:`.spin.config`."""

from .spin.config import SPIN_LOSS_TYPES, SPINConfig  # noqa: F401
