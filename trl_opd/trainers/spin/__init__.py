"""Self-play fine-tuning (SPIN, Chen et al. 2024): rounds of ``trl.DPOTrainer`` against the previous iterate.

* :mod:`.config`: :class:`SPINConfig`, TRL's ``DPOConfig`` plus the rounds, generation and the saturation check;
* :mod:`.trainer`: :class:`SPINTrainer`, the round driver;
* :mod:`.pairs`: each round's {prompt, chosen, rejected} pairs (sampling, the chosen side, the prefix filter);
* :mod:`.reference`: the previous iterate as DPO's reference (a frozen copy, or a frozen adapter with PEFT);
* :mod:`.round_trainer`: one round's ``DPOTrainer`` with the non-finite guard;
* :mod:`.saturation`: KL(θ_k ‖ θ_{k-1}) on fresh samples and the stop rule;
* :mod:`.rounds`: the rounds on disk (``rounds.json``, ``round-k/``, the resume points) and their table;
* :mod:`.inputs`: the checks of the tokenizer, the dataset and the prompt lengths.
"""

from ...scoring import sequence_log_probs
from .config import SPIN_LOSS_TYPES, SPINConfig
from .rounds import ROUND_TABLE_COLUMNS, format_round_table
from .saturation import saturation_verdict
from .trainer import SPINTrainer


__all__ = [
    "ROUND_TABLE_COLUMNS",
    "SPIN_LOSS_TYPES",
    "SPINConfig",
    "SPINTrainer",
    "format_round_table",
    "saturation_verdict",
    "sequence_log_probs",
]
