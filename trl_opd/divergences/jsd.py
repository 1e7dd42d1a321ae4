r"""Generalized Jensen-Shannon divergence, TRL's convention::

    M = β · p_T + (1 − β) · p_S,        JSD_β = β · KL(p_T ‖ M) + (1 − β) · KL(p_S ‖ M)

β = 0.5 is the symmetric JSD, bounded by log 2. (Liger-Kernel mixes ``M = β · p_S + (1 − β) · p_T``: its β is our
1 − β.) At β = 0 and β = 1 the registry computes the forward and the reverse KL instead (TRL's convention, not the
limit: JSD_β → 0 as β → 0), so these functions see 0 < β < 1 only.

Closed-form logit gradient (times τ): ``∂D/∂p_S = (1 − β) log(p_S / M)`` (the terms through M cancel), so
``G = (1 − β) p_S ⊙ (log(p_S/M) − KL(p_S ‖ M))`` (see :mod:`.fkl` for the interface).
"""

from __future__ import annotations

import math

import torch

from .ops import rowdot


def dense(log_p_s: torch.Tensor, log_p_t: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    log_m = torch.logaddexp(log_p_t + math.log(beta), log_p_s + math.log1p(-beta))
    kl_teacher = (log_p_t.exp() * (log_p_t - log_m)).sum(-1)
    kl_student = (log_p_s.exp() * (log_p_s - log_m)).sum(-1)
    return beta * kl_teacher + (1.0 - beta) * kl_student


def value_and_gradient(log_p_s, p_s, log_p_t, beta=0.5):
    """``β KL(p_T‖M) + (1−β) KL(p_S‖M)`` and ``(1−β) p_S ⊙ (log(p_S/M) − KL(p_S‖M))``; five tiles, overwrites
    ``log_p_t``."""
    log_m = log_p_t + math.log(beta)
    torch.logaddexp(log_m, log_p_s + math.log1p(-beta), out=log_m)
    p_t = log_p_t.exp()
    kl_teacher = rowdot(p_t, log_p_t.sub_(log_m))
    del p_t
    student_gap = log_m.neg_().add_(log_p_s)  # log p_S − log M
    kl_student = rowdot(p_s, student_gap)
    grad = student_gap.sub_(kl_student.unsqueeze(-1)).mul_(p_s).mul_(1.0 - beta)
    return beta * kl_teacher + (1.0 - beta) * kl_student, grad
