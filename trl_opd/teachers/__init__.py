"""The teacher side of distillation: a frozen model whose next-token distributions the student is trained towards.

* :class:`Teacher` (:mod:`.live`): a local model placed for a trainer's accelerator, its head on the shared
  vocabulary, and the scoring every trainer needs (hidden states for the chunked divergences, token log-probs).
"""

from .live import Teacher


__all__ = ["Teacher"]
