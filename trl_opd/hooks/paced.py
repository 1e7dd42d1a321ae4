r"""PACED curriculum sampling, the math (the tutorial's chapter 7, "Pillar 2"): train at the student's frontier.

Every training example ``i`` carries ``p_i``, a running estimate of how often the student "solves" it. Examples are
drawn with probability proportional to

.. math::

    w_i = \text{floor} + p_i^{\alpha} (1 − p_i)^{\beta}          (default α = β = 1, floor = 1e-3)

so examples the student always solves (``p ≈ 1``) or never solves (``p ≈ 0``) are rarely drawn, and the frontier is
drawn most: for α = β = 1 the peak is at ``p = 0.5`` (``w = 0.25 + floor``); in general at ``p* = α / (α + β)``.
The additive ``floor`` keeps every example reachable (none is starved forever) and keeps an all-solved or all-failed
dataset sampleable (then the draw is uniform).

Each observation ``o ∈ [0, 1]`` of an example (1 = solved; a verifier's reward, or, without a verifier, the proxy
``o = exp(−D)`` with ``D`` the example's mean per-token divergence to the teacher in nats) moves its estimate by an
exponential moving average ``p ← (1 − ema) · p + ema · o``; unseen examples have ``p = prior``.

Optional easy-first warm-up (needs per-example ``difficulty``, larger = harder): during the first ``warmup_steps``
generation batches the weights are multiplied by

.. math::

    f_i(t) = \exp\big(−s · (1 − t / W) · r_i\big)      for t < W,        f_i(t) = 1 for t ≥ W,

with ``t`` the number of generation batches drawn so far, ``W = warmup_steps``, ``s = warmup_strength`` and
``r_i ∈ [0, 1]`` the difficulty rank of example ``i`` (0 = easiest, 1 = hardest, average rank for ties,
``r_i = rank_i / (N − 1)``). On the first batch the hardest example is ``e^s`` (≈ 20 for ``s = 3``) times less likely
than the easiest one at equal ``p``; the factor fades linearly (in the exponent) to 1.

:meth:`PacedCurriculum.sampler` replaces TRL's ``RepeatSampler``: it yields indices in exactly RepeatSampler's layout
(generation batches of ``batch_size`` distinct indices, each batch repeated ``repeat_count`` times consecutively,
every index repeated ``mini_repeat_count`` times in place) but draws each generation batch lazily, from the state at
the moment it is drawn, with a ``torch.Generator`` that lives on the curriculum (so re-created samplers and
checkpoints continue one single draw sequence).
"""

from __future__ import annotations

import math

import torch


def check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def paced_weights(p: torch.Tensor, alpha: float = 1.0, beta: float = 1.0, floor: float = 1e-3) -> torch.Tensor:
    r"""Unnormalised PACED weights ``w = floor + p^α · (1 − p)^β`` (elementwise).

    ``floor`` is *added* (not a clamp): ``p = 0`` and ``p = 1`` give exactly ``floor`` (for α, β > 0), ``p = 0.5`` with
    α = β = 1 gives ``0.25 + floor``, α = 2, β = 1 at ``p = 0.5`` gives ``0.125 + floor``. It keeps every example
    drawable, and makes an all-solved / all-failed dataset sample uniformly. ``0^0 = 1`` (so α = 0 gives
    ``floor + (1 − p)^β``). For α = β the weight increases on [0, 0.5] and decreases on [0.5, 1]; in general its
    maximum is at ``p* = α / (α + β)``.

    Args:
        p: success estimates in [0, 1] (any shape; lists are accepted; integer input is promoted to float64).
        alpha, beta: exponents (>= 0).
        floor: additive floor (>= 0).

    Returns:
        A tensor of the same shape as ``p`` (float; ``p``'s floating dtype, float64 otherwise).
    """
    check_non_negative("alpha", alpha)
    check_non_negative("beta", beta)
    check_non_negative("floor", floor)
    p = torch.as_tensor(p)
    if not p.is_floating_point():
        p = p.to(torch.float64)
    if p.numel() and not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError("paced_weights: p must lie in [0, 1] (and not be NaN).")
    return floor + p.pow(alpha) * (1 - p).pow(beta)


def observation_from_divergence(mean_divergence: float | torch.Tensor) -> float | torch.Tensor:
    r"""The verifier-free success proxy ``o = exp(−D)``.

    ``D`` is an example's mean per-token divergence to the teacher in nats (low divergence = "solved"): ``D = 0``
    gives 1, ``D = log 2`` gives 0.5, ``D → ∞`` gives 0. A slightly negative ``D`` (possible with sampled divergence
    estimators) is clamped to 0; NaN raises ``ValueError``. Pure.

    A Python number gives a ``float``; a tensor gives a tensor of the same shape (elementwise, one value per example,
    same device; integer input is promoted to float32), so a batch of per-row divergences maps in one call.
    """
    if isinstance(mean_divergence, torch.Tensor):
        d = mean_divergence.detach()
        if not d.is_floating_point():
            d = d.to(torch.float32)
        if d.numel() and bool(torch.isnan(d).any()):
            raise ValueError("observation_from_divergence: a divergence is NaN.")
        return torch.exp(-d.clamp(min=0))
    d = float(mean_divergence)
    if math.isnan(d):
        raise ValueError("observation_from_divergence: the divergence is NaN.")
    return math.exp(-max(d, 0.0))


def difficulty_ranks(difficulty: torch.Tensor) -> torch.Tensor:
    """Ranks in [0, 1] (0 = smallest difficulty = easiest), average rank for ties, all 0 when N == 1."""
    n = difficulty.numel()
    if n <= 1:
        return torch.zeros(n, dtype=torch.float64)
    _, inverse, counts = torch.unique(difficulty, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    start = torch.cumsum(counts, 0) - counts  # 0-based position of each distinct value's first occurrence
    average_rank = start + (counts - 1) / 2
    return average_rank[inverse] / (n - 1)
