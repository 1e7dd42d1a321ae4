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

from collections.abc import Mapping
from dataclasses import dataclass


LMBDA_SCHEDULES = ("constant", "linear", "three_phase")

#: The ramp's end points ``(start, end)`` when they are not given: the tutorial's 0.3 → 0.7 for ``"three_phase"``,
#: the full 0 → 1 otherwise.
RAMP_DEFAULTS = {"three_phase": (0.3, 0.7)}
FULL_RAMP = (0.0, 1.0)

#: The config field (``GKDConfig``, a YAML of ``trl-opd gkd``) of each :class:`LambdaSchedule` argument.
CONFIG_FIELDS = {
    "kind": "lmbda_schedule",
    "lmbda": "lmbda",
    "start": "lmbda_start",
    "end": "lmbda_end",
    "warmup_fraction": "lmbda_warmup_fraction",
    "mixed_fraction": "lmbda_mixed_fraction",
}


@dataclass(frozen=True)
class LambdaSchedule:
    """λ as a function of progress, and the facts about it that the trainers and the tools read.

    ``GKDConfig`` builds one from its ``lmbda*`` fields when it is created (``GKDConfig.lambda_schedule()`` returns it).

    Args:
        kind: one of ``"constant"``, ``"linear"``, ``"three_phase"``.
        lmbda: the constant value (``"constant"``).
        start, end: the end points of ``"linear"``, and of the mixed ramp of ``"three_phase"``; ``None`` takes
            :data:`RAMP_DEFAULTS` (0.3 → 0.7 for ``"three_phase"``, 0 → 1 otherwise).
        warmup_fraction, mixed_fraction: the lengths of the first two phases of ``"three_phase"``.
    """

    kind: str = "constant"
    lmbda: float = 0.5
    start: float | None = None
    end: float | None = None
    warmup_fraction: float = 0.2
    mixed_fraction: float = 0.4

    def __post_init__(self):
        if self.kind not in LMBDA_SCHEDULES:
            raise ValueError(
                f"Unknown lmbda_schedule {self.kind!r}; choose one of {', '.join(map(repr, LMBDA_SCHEDULES))}."
            )
        default_start, default_end = RAMP_DEFAULTS.get(self.kind, FULL_RAMP)
        if self.start is None:
            object.__setattr__(self, "start", default_start)
        if self.end is None:
            object.__setattr__(self, "end", default_end)
        for name in ("lmbda", "start", "end", "warmup_fraction", "mixed_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        if self.warmup_fraction + self.mixed_fraction > 1.0:
            raise ValueError(
                f"warmup_fraction + mixed_fraction must be <= 1, got {self.warmup_fraction} + {self.mixed_fraction}."
            )

    @classmethod
    def from_config(cls, values: Mapping) -> LambdaSchedule:
        """The schedule of a config's ``lmbda*`` fields (:data:`CONFIG_FIELDS`), given as a mapping of field names."""
        return cls(**{arg: values[name] for arg, name in CONFIG_FIELDS.items()})

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

    def is_always(self, value: float) -> bool:
        """Whether λ(s) = ``value`` for every progress s in [0, 1] (every phase of the schedule, not a sample)."""
        if self.kind == "constant":
            return self.lmbda == value
        if self.kind == "linear":
            return self.start == self.end == value
        phases = [1.0]  # λ(1) = 1: the last phase includes s = 1 even when warmup + mixed = 1
        if self.warmup_fraction > 0:
            phases.append(0.0)
        if self.mixed_fraction > 0:
            phases += [self.start, self.end]
        return all(v == value for v in phases)

    @property
    def always_on_policy(self) -> bool:
        """λ ≡ 1: every row samples its completion from the student (no dataset completion is ever read)."""
        return self.is_always(1.0)

    @property
    def always_off_policy(self) -> bool:
        """λ ≡ 0: every row trains on its dataset completion (a teacher cache can serve them all)."""
        return self.is_always(0.0)

    def describe(self) -> str:
        """In one line: ``constant λ = 0.5``, ``linear λ 0 → 1``, ``three_phase: λ = 0 for 20%, 0.3 → 0.7 ...``."""
        if self.kind == "constant":
            return f"constant λ = {self.lmbda:g}"
        if self.kind == "linear":
            return f"linear λ {self.start:g} → {self.end:g}"
        return (
            f"three_phase: λ = 0 for {self.warmup_fraction:.0%}, {self.start:g} → {self.end:g} over "
            f"{self.mixed_fraction:.0%}, then λ = 1"
        )
