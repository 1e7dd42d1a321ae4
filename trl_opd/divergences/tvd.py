r"""Total variation distance, ``TV = ½ Σ_v |p_T(v) − p_S(v)|``, in [0, 1].

Closed-form logit gradient (times τ): ``G = p_S ⊙ (g − ⟨p_S, g⟩)`` with ``g = ∂D/∂p_S = ½ sign(p_S − p_T)`` (see
:mod:`.fkl` for the interface).
"""

from __future__ import annotations

import torch

from .ops import rowdot


def dense(log_p_s: torch.Tensor, log_p_t: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    return 0.5 * (log_p_t.exp() - log_p_s.exp()).abs().sum(-1)


def value_and_gradient(log_p_s, p_s, log_p_t, beta=0.5):
    """``½ Σ |p_T − p_S|`` and ``p_S ⊙ (g − ⟨p_S, g⟩)``; three tiles, overwrites ``log_p_t``."""
    diff = log_p_t.exp_().neg_().add_(p_s)  # p_S − p_T
    values = 0.5 * torch.linalg.vector_norm(diff, ord=1, dim=-1)
    g = diff.sign_().mul_(0.5)
    return values, g.sub_(rowdot(p_s, g).unsqueeze(-1)).mul_(p_s)
