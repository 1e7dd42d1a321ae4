r"""Forward KL, ``KL(p_T ‖ p_S) = Σ_v p_T(v) (log p_T(v) − log p_S(v))`` (mode covering).

Every divergence module defines the same two functions on log-probabilities over the last dimension:

* ``dense(log_p_s, log_p_t, beta)``: the values, differentiable by autograd;
* ``value_and_gradient(log_p_s, p_s, log_p_t, beta)``: for one chunk of rows of the chunked engine, the values and
  ``G = τ · ∂D/∂u_S``, the gradient with respect to the student's logits ``u_S`` (before the temperature), computed in
  closed form and in place on the given tiles (``log_p_t`` may be overwritten; ``p_s = exp(log_p_s)`` is read only).

For the forward KL ``G = p_S − p_T``.
"""

from __future__ import annotations

import torch

from .ops import rowdot


def dense(log_p_s: torch.Tensor, log_p_t: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)


def value_and_gradient(log_p_s, p_s, log_p_t, beta=0.5):
    """``Σ p_T (log p_T − log p_S)`` and ``p_S − p_T``; four tiles (log p_S, p_S, log p_T, p_T)."""
    p_t = log_p_t.exp()
    values = rowdot(p_t, log_p_t) - rowdot(p_t, log_p_s)
    return values, p_t.neg_().add_(p_s)
