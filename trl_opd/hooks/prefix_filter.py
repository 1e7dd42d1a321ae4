r"""Flawed-prefix rejection (the tutorial's chapter 7, "Pillar 3").

The teacher's judgement of degenerate text ("the the the the ...", word salad) is noise, and training on it harms the
student. Before the teacher scores a student rollout, each rollout is checked:

* **perplexity**: ``PPL = exp(−(1/T) Σ_t log p_θ(y_t | x, y<t))`` under the student at temperature 1; a rollout with
  ``PPL > max_perplexity`` (the tutorial suggests 100-500) is word salad;
* **loop**: the longest stretch where the text repeats itself with a period of ``p ≤ loop_max_period`` tokens; a
  stretch that covers at least ``loop_min_repeats`` periods and ``loop_min_tokens`` tokens is a loop.
  ``the the the the the the the the`` is 8 tokens of period 1 (8 repeats).

A rejected row is either dropped from the loss (``policy="drop"``) or replaced by the dataset's completion, i.e.
trained off-policy (``policy="replace"``). A batch whose every rollout is rejected falls back to off-policy rows (with
a warning) rather than training on zero tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


PREFIX_POLICIES = ("drop", "replace")


def longest_loop(ids: Sequence[int], max_period: int) -> tuple[int, int]:
    """``(length, period)`` of the longest stretch of ``ids`` equal to itself shifted by ``period`` tokens.

    A stretch ``ids[i : i + length]`` with ``ids[j] == ids[j − period]`` for every j after its first period; so
    ``length / period`` is the number of repeats. ``(0, 0)`` when nothing repeats.
    """
    best = (0, 0)
    for period in range(1, max_period + 1):
        run = 0
        for j in range(period, len(ids)):
            run = run + 1 if ids[j] == ids[j - period] else 0
            if run and run + period > best[0]:
                best = (run + period, period)
    return best


def perplexity(token_log_probs: Sequence[float]) -> float:
    """``exp(−mean log p)`` (``nan`` for an empty sequence)."""
    if len(token_log_probs) == 0:
        return float("nan")
    return math.exp(-sum(token_log_probs) / len(token_log_probs))


@dataclass
class FlawedPrefixFilter:
    """Detects degenerate student rollouts; pass it as ``prefix_filter=`` to a trainer.

    Args:
        max_perplexity: reject when the student's perplexity of its own rollout exceeds this (``None``: off).
        loop_max_period: longest repeating unit searched, in tokens.
        loop_min_repeats: a loop covers at least this many periods ...
        loop_min_tokens: ... and at least this many tokens.
        policy: ``"drop"`` the row from the loss, or ``"replace"`` it by the dataset completion (off-policy).
    """

    max_perplexity: float | None = 300.0
    loop_max_period: int = 8
    loop_min_repeats: int = 4
    loop_min_tokens: int = 8
    policy: str = "replace"

    def __post_init__(self):
        if self.policy not in PREFIX_POLICIES:
            raise ValueError(f"Unknown policy {self.policy!r}; choose one of {', '.join(map(repr, PREFIX_POLICIES))}.")
        if self.max_perplexity is not None and not self.max_perplexity > 1.0:
            raise ValueError(f"max_perplexity must be > 1 (or None to disable it), got {self.max_perplexity}.")
        for name in ("loop_max_period", "loop_min_repeats", "loop_min_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")

    @property
    def needs_log_probs(self) -> bool:
        """Whether :meth:`reason` needs the student's token log-probabilities (an extra no-grad forward pass)."""
        return self.max_perplexity is not None

    def is_loop(self, ids: Sequence[int]) -> bool:
        length, period = longest_loop(ids, self.loop_max_period)
        return period > 0 and length >= self.loop_min_tokens and length >= self.loop_min_repeats * period

    def reason(self, ids: Sequence[int], token_log_probs: Sequence[float] | None = None) -> str | None:
        """``"loop"``, ``"perplexity"`` or ``None`` (kept) for one rollout (its completion token ids)."""
        if self.is_loop(ids):
            return "loop"
        if self.max_perplexity is not None:
            if token_log_probs is None:
                raise ValueError("This filter checks perplexity: pass the rollout's token log-probabilities.")
            if perplexity(token_log_probs) > self.max_perplexity:
                return "perplexity"
        return None
