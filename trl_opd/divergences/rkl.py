r"""Reverse KL, ``KL(p_S ‖ p_T) = Σ_v p_S(v) (log p_S(v) − log p_T(v))`` (mode seeking).

Closed-form logit gradient (times τ): ``G = p_S ⊙ (d − D)`` with ``d = log p_S − log p_T`` (see :mod:`.fkl` for the
interface). ``d`` is shifted by its value ``c`` at the student's most likely token before the weighted sum:
``D = c + Σ p_S (d − c)`` and ``d − D = (d − c) − Σ p_S (d − c)``. Where the student is peaked on a token the teacher
finds unlikely, ``d ≈ D`` can be 15-20 nats at that token and ``d − D`` cancels: the plain float32 sum put the
gradient there 350 float32 ulps off, the shifted one within one (tests/test_divergences.py, against float64).

Where the teacher gives a token zero probability and the student does not, the true reverse KL is infinite: the
teacher's log-probability is floored at :data:`.ops.LOG_PROB_FLOOR` (log of float32's smallest normal number, −87.34),
which bounds the value by ``Σ p_S (log p_S + 87.34)`` and keeps the gradient finite. Tokens the student also gives zero
probability contribute exactly 0.
"""

from __future__ import annotations

import torch

from .ops import LOG_PROB_FLOOR, rowdot


def dense(log_p_s: torch.Tensor, log_p_t: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    return (log_p_s.exp() * (log_p_s - log_p_t.clamp(min=LOG_PROB_FLOOR))).sum(-1)


def value_and_gradient(log_p_s, p_s, log_p_t, beta=0.5):
    """``Σ p_S (log p_S − log p_T)`` and ``p_S ⊙ (log p_S − log p_T − D)``; three tiles, overwrites ``log_p_t``."""
    diff = log_p_t.clamp_(min=LOG_PROB_FLOOR).neg_().add_(log_p_s)
    shift = diff.gather(-1, p_s.argmax(-1, keepdim=True))
    diff.sub_(shift)
    centred = rowdot(p_s, diff)
    return centred + shift.squeeze(-1), diff.sub_(centred.unsqueeze(-1)).mul_(p_s)
