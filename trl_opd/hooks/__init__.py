"""Stability hooks, composable with every trainer: pass them to the trainer's constructor.

* :class:`TokenImportance` (``token_importance=``): TIP per-token loss weights.
* :class:`PacedCurriculum` (``curriculum=``): PACED sampling of examples at the student's frontier.
* :class:`FlawedPrefixFilter` (``prefix_filter=``): rejection of degenerate student rollouts.
"""

from .curriculum import PacedCurriculum
from .prefix_filter import FlawedPrefixFilter
from .token_importance import TokenImportance, importance_scores


__all__ = ["FlawedPrefixFilter", "PacedCurriculum", "TokenImportance", "importance_scores"]
