r"""TIP: token importance weighting (the tutorial's chapter 7, "Pillar 1").

Not every completion token carries signal. A token is worth training on when the teacher is confident there *and*
the student disagrees with it. Two scorers of a token t:

* ``"teacher_confidence"`` (the tutorial's formula)::

      s_t = (1 − H(p_T,t) / log V) · D_t

  H the teacher's entropy at t (nats), V the vocabulary size (so H / log V ∈ [0, 1]), D_t the per-token divergence.
* ``"student_entropy"`` (the TIP paper's): ``s_t = H(p_S,t) · D_t`` — the student's uncertainty times the divergence.

Three ways to turn scores into per-token loss weights over the tokens of a micro-batch:

* ``"threshold"``: keep the tokens with ``s_t ≥ threshold``;
* ``"top_fraction"``: keep the ``ceil(keep_fraction · n)`` highest-scoring tokens;
* ``"soft"``: weight ``s_t / mean(s)``.

With ``normalize=True`` (the default) hard weights are ``n / n_kept`` on kept tokens, so every mode gives weights of
mean 1 and the loss stays the mean divergence over the trained tokens: runs at different kept fractions compare at
equal learning rates. Dropped tokens get weight 0, which the chunked divergence skips in the backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


TIP_SCORERS = ("teacher_confidence", "student_entropy")
TIP_MODES = ("threshold", "top_fraction", "soft")


def importance_scores(teacher_entropy: torch.Tensor, divergence: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The tutorial's score ``(1 − H_T / log V) · D``, element-wise (H_T and D in nats)."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}.")
    return (1.0 - teacher_entropy / math.log(vocab_size)) * divergence


def student_entropy_scores(student_entropy: torch.Tensor, divergence: torch.Tensor) -> torch.Tensor:
    """The TIP paper's score ``H_S · D``, element-wise."""
    return student_entropy * divergence


@dataclass
class TokenImportance:
    """Per-token loss weights from importance scores; pass it as ``token_importance=`` to a trainer.

    Args:
        scorer: ``"teacher_confidence"`` or ``"student_entropy"`` (see the module docstring).
        mode: ``"threshold"``, ``"top_fraction"`` or ``"soft"``.
        threshold: τ of ``"threshold"`` (the tutorial uses 0.30).
        keep_fraction: ρ of ``"top_fraction"``, in (0, 1].
        normalize: rescale hard weights to mean 1 over the micro-batch's tokens.
    """

    scorer: str = "teacher_confidence"
    mode: str = "top_fraction"
    threshold: float = 0.3
    keep_fraction: float = 0.5
    normalize: bool = True

    def __post_init__(self):
        if self.scorer not in TIP_SCORERS:
            raise ValueError(f"Unknown TIP scorer {self.scorer!r}; choose one of {', '.join(map(repr, TIP_SCORERS))}.")
        if self.mode not in TIP_MODES:
            raise ValueError(f"Unknown TIP mode {self.mode!r}; choose one of {', '.join(map(repr, TIP_MODES))}.")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}.")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}.")

    def scores(
        self, divergence: torch.Tensor, teacher_entropy: torch.Tensor, student_entropy: torch.Tensor, vocab_size: int
    ) -> torch.Tensor:
        """Importance of each token (no gradient)."""
        divergence = divergence.detach()
        if self.scorer == "teacher_confidence":
            return importance_scores(teacher_entropy.detach(), divergence, vocab_size)
        return student_entropy_scores(student_entropy.detach(), divergence)

    def weights(
        self, divergence: torch.Tensor, teacher_entropy: torch.Tensor, student_entropy: torch.Tensor, vocab_size: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``(weights, metrics)`` for the ``(n,)`` tokens; metrics: ``tip/kept_fraction``, ``tip/mean_score``."""
        scores = self.scores(divergence, teacher_entropy, student_entropy, vocab_size)
        n = scores.numel()
        if n == 0:
            return scores, {}
        if self.mode == "soft":
            mean = scores.clamp(min=0).mean()
            weights = scores.clamp(min=0) / mean if mean > 0 else torch.ones_like(scores)
            kept = int((weights > 0).sum())
        else:
            if self.mode == "threshold":
                keep = scores >= self.threshold
            else:
                k = max(1, math.ceil(self.keep_fraction * n))
                keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
                keep[scores.topk(k).indices] = True
            kept = int(keep.sum())
            scale = n / kept if (self.normalize and kept) else 1.0
            weights = keep.float() * scale
        return weights, {"tip/kept_fraction": kept / n, "tip/mean_score": scores.mean().item()}
