"""Tensor operations the divergences share: log-softmax with ``-inf`` made finite, and row-wise dot products."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


#: The floor of the teacher's log-probability inside the reverse KL's log-ratio: log of float32's smallest normal
#: number (-87.34). Where the teacher gives a token exactly zero probability (a ``-inf`` logit) and the student does
#: not, ``p_S (log p_S − log p_T)`` is infinite; with the floor it is bounded by ``p_S (log p_S + 87.34)`` and its
#: gradient is finite. Tokens whose teacher probability is representable in float32 are unaffected.
LOG_PROB_FLOOR = math.log(torch.finfo(torch.float32).tiny)


def safe_log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """float32 ``log_softmax(logits / τ)`` with ``-inf`` replaced by the most negative finite float.

    A masked vocabulary (``-inf`` logits) then gives exact zeros instead of ``0 · inf = nan`` in values and gradients.
    """
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    return log_p.clamp(min=torch.finfo(log_p.dtype).min)


def log_softmax_(z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """In place: ``z ← log_softmax(z / τ)``, ``-inf`` clamped to the most negative finite float (as above).

    Subtracting the row maximum first (exact for the large entries) and then the log of a sum in [1, V] keeps the
    log-probabilities of likely tokens accurate to a few ulps; ``z − logsumexp(z)`` in one step rounds them at the
    scale of ``|max z|`` (3x the float32 error of the gradients, measured against float64).
    """
    if temperature != 1.0:
        z.div_(temperature)
    z.sub_(z.amax(dim=-1, keepdim=True))
    z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))
    return z.clamp_(min=torch.finfo(z.dtype).min)


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ_v a[n, v] b[n, v]`` for each row n, without an (n, V) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(-1)).view(-1)


def check_temperature(temperature: float) -> None:
    if not temperature > 0:  # also refuses NaN
        raise ValueError(f"temperature must be > 0, got {temperature}.")
