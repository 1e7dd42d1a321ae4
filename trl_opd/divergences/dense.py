r"""Per-token divergences on full logits ``(..., V)``: the reference path, differentiated by autograd.

Notation: at one token position the student's distribution is ``p_S = softmax(z_S / τ)`` and the teacher's is
``p_T = softmax(z_T / τ)`` over the same vocabulary (τ the temperature); values in nats. The formulas are in
:mod:`trl_opd.divergences.registry` and one module per divergence. Logits are upcast to float32 before the softmax,
so bfloat16 inputs are safe, and ``-inf`` logits (a masked vocabulary) give exact zeros (:func:`.ops.safe_log_softmax`).
"""

from __future__ import annotations

import torch

from .ops import check_temperature, safe_log_softmax
from .registry import REGISTRY, resolve


def divergence_from_log_probs(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, divergence: str = "jsd", beta: float = 0.5
) -> torch.Tensor:
    """The divergence over the last dimension of two log-probability tensors (any float dtype, kept)."""
    return resolve(divergence, beta).dense(student_log_probs, teacher_log_probs, beta)


def forward_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(p_T ‖ p_S) = Σ p_T (log p_T − log p_S)`` over the last dimension."""
    return REGISTRY["fkl"].dense(student_log_probs, teacher_log_probs)


def reverse_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(p_S ‖ p_T) = Σ p_S (log p_S − log p_T)`` over the last dimension."""
    return REGISTRY["rkl"].dense(student_log_probs, teacher_log_probs)


def generalized_jsd(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float) -> torch.Tensor:
    """``β KL(p_T ‖ M) + (1 − β) KL(p_S ‖ M)`` with ``M = β p_T + (1 − β) p_S``; β = 0 / 1 give forward / reverse KL."""
    return divergence_from_log_probs(student_log_probs, teacher_log_probs, "jsd", beta)


def total_variation(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """``½ Σ |p_T − p_S|`` over the last dimension."""
    return REGISTRY["tvd"].dense(student_log_probs, teacher_log_probs)


def per_token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    divergence: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Divergence between ``softmax(teacher_logits / τ)`` and ``softmax(student_logits / τ)`` at every position.

    Args:
        student_logits: ``(..., V)`` logits of the student (any float dtype; computed in float32).
        teacher_logits: ``(..., V)`` logits of the teacher, same shape.
        divergence: ``"fkl"``, ``"rkl"``, ``"jsd"`` or ``"tvd"`` (see :mod:`trl_opd.divergences.registry`).
        beta: JSD interpolation in [0, 1], TRL's convention (only used by ``"jsd"``).
        temperature: softmax temperature τ > 0 applied to both models.

    Returns:
        float32 tensor of shape ``student_logits.shape[:-1]``, in nats (TVD is unitless, in [0, 1]).
    """
    record = resolve(divergence, beta)
    check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in "
            "shape; the vocabularies must match (slice both to the shared tokenizer's size)."
        )
    return record.dense(
        safe_log_softmax(student_logits, temperature), safe_log_softmax(teacher_logits, temperature), beta
    )


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Shannon entropy ``H(p) = −Σ p log p`` of ``softmax(logits / τ)`` over the last dimension, in nats."""
    log_p = safe_log_softmax(logits, temperature)
    return -(log_p.exp() * log_p).sum(-1)
