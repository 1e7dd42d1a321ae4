r"""Schedules for the on-policy probability λ (``lmbda``) as a function of training progress.

Progress is ``s = step / max_steps`` in [0, 1]. Three schedules:

* ``"constant"``:     λ(s) = ``lmbda``.
* ``"linear"``:       λ(s) = ``start + (end − start) · s``.
* ``"three_phase"``:  the tutorial's industrial schedule (chapter 7): off-policy warm-up, mixed ramp, on-policy::

      λ(s) = 0                                         for s < w            (w = warmup_fraction, default 0.2)
      λ(s) = a + (b − a) · (s − w) / m                 for w ≤ s < w + m   (m = mixed_fraction, default 0.4;
                                                                            a, b = 0.3, 0.7)
      λ(s) = 1                                         for s ≥ w + m        (the last 40 %)
"""

from __future__ import annotations

from dataclasses import dataclass


LMBDA_SCHEDULES = ("constant", "linear", "three_phase")


@dataclass(frozen=True)
class LambdaSchedule:
    """λ as a function of progress (``GKDConfig.lambda_schedule()`` builds one from a config).

    Args:
        kind: one of ``"constant"``, ``"linear"``, ``"three_phase"``.
        lmbda: the constant value (``"constant"``).
        start, end: the end points of ``"linear"``, and of the mixed ramp of ``"three_phase"``.
        warmup_fraction, mixed_fraction: the lengths of the first two phases of ``"three_phase"``.
    """

    kind: str = "constant"
    lmbda: float = 0.5
    start: float = 0.3
    end: float = 0.7
    warmup_fraction: float = 0.2
    mixed_fraction: float = 0.4

    def __post_init__(self):
        if self.kind not in LMBDA_SCHEDULES:
            raise ValueError(
                f"Unknown lmbda_schedule {self.kind!r}; choose one of {', '.join(map(repr, LMBDA_SCHEDULES))}."
            )
        for name in ("lmbda", "start", "end", "warmup_fraction", "mixed_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        if self.warmup_fraction + self.mixed_fraction > 1.0:
            raise ValueError(
                f"warmup_fraction + mixed_fraction must be <= 1, got {self.warmup_fraction} + {self.mixed_fraction}."
            )

    def __call__(self, progress: float) -> float:
        """λ at ``progress`` = step / max_steps (clipped to [0, 1])."""
        s = min(max(progress, 0.0), 1.0)
        if self.kind == "constant":
            return self.lmbda
        if self.kind == "linear":
            return self.start + (self.end - self.start) * s
        w, m = self.warmup_fraction, self.mixed_fraction
        eps = 1e-12  # 0.2 + 0.4 == 0.6000000000000001: phase boundaries must not depend on float rounding
        if s < w - eps:
            return 0.0
        if s < w + m - eps:
            return self.start + (self.end - self.start) * (s - w) / m
        return 1.0

    def at_step(self, step: int, max_steps: int) -> float:
        """λ at optimizer step ``step`` of ``max_steps`` (``max_steps <= 0`` reads as progress 0)."""
        return self(step / max_steps if max_steps > 0 else 0.0)
