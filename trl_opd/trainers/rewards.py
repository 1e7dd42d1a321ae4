"""Verifier reward functions, checked: every value a number; ``None`` (not applicable) counted; NaN and inf refused.

TRL's GRPO convention is that a reward function may return ``None`` for a completion it does not apply to (several
task-specific verifiers on a mixed dataset); TRL turns it into NaN and sums the rewards with ``nansum``, so a NaN the
function itself returned would count as 0 just as silently, and an infinity would reach the advantages. Wrapped in
:class:`CheckedReward`, each function's ``None`` values are counted (logged as ``rewards/<name>/none``) and count as 0,
and a NaN, an infinity or a value that is not a number is reported to the trainer's non-finite guard with the
function's name (stop with an error, or skip the step).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from numbers import Real


class CheckedReward:
    """A GRPO reward function whose outputs are checked (see the module docstring).

    Args:
        func: ``func(prompts=..., completions=..., **columns) -> list[float | None]``.
        report: ``report(quantity, cause)``, the trainer's :meth:`~trl_opd.trainers.guard.FiniteGuardMixin.nonfinite`.
    """

    def __init__(self, func: Callable, report: Callable[[str, str], None]):
        functools.update_wrapper(self, func)
        self.func, self.report = func, report
        self.none_count = 0

    def _check(self, rewards) -> list:
        name = self.__name__
        out = []
        for i, value in enumerate(rewards):
            if value is None:
                self.none_count += 1
                out.append(None)
                continue
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(
                    f"The reward function {name!r} returned {value!r} ({type(value).__name__}) for completion {i}; "
                    "a reward must be a number (or None where the function does not apply)."
                )
            if not math.isfinite(value):
                self.report(
                    f"the reward {value} of the reward function {name!r} (completion {i})",
                    "the verifier divided by zero or parsed an overflowing number; return None where it does not apply",
                )
                value = None  # with nonfinite_policy='skip' the step is dropped; the value must not reach the sum
            out.append(value)
        return out

    def __call__(self, *args, **kwargs):
        return self._check(self.func(*args, **kwargs))


class CheckedAsyncReward(CheckedReward):
    """The same for an ``async def`` reward function (TRL runs those concurrently)."""

    async def __call__(self, *args, **kwargs):
        return self._check(await self.func(*args, **kwargs))


def checked_reward_funcs(reward_funcs: list, report: Callable[[str, str], None]) -> list:
    """Each plain callable of ``reward_funcs`` wrapped in a checker; reward models (``nn.Module``, model ids) kept."""
    import torch

    out = []
    for func in reward_funcs:
        if isinstance(func, (str, torch.nn.Module)) or not callable(func):
            out.append(func)
        elif inspect.iscoroutinefunction(func):
            out.append(CheckedAsyncReward(func, report))
        else:
            out.append(CheckedReward(func, report))
    return out
