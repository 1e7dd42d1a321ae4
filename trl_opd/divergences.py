r"""Per-token divergences between a teacher and a student next-token distribution.

Notation: at one token position the student's distribution is ``p_S = softmax(z_S / τ)`` and the teacher's is
``p_T = softmax(z_T / τ)`` over the same vocabulary of size V (τ is the temperature). All values are in nats.

* Forward KL  (``"fkl"``):  ``KL(p_T ‖ p_S) = Σ_v p_T(v) · (log p_T(v) − log p_S(v))``   (mode covering)
* Reverse KL  (``"rkl"``):  ``KL(p_S ‖ p_T) = Σ_v p_S(v) · (log p_S(v) − log p_T(v))``   (mode seeking)
* Generalized JSD(β) (``"jsd"``), following TRL's convention exactly::

      M = β · p_T + (1 − β) · p_S
      JSD_β = β · KL(p_T ‖ M) + (1 − β) · KL(p_S ‖ M)

  with TRL's convention at the endpoints (a convention, not a limit: JSD_β → 0 as β → 0): β = 0 is the forward KL,
  β = 1 the reverse KL. β = 0.5 is the
  symmetric JSD bounded by log 2. (Liger-Kernel mixes ``M = β · p_S + (1 − β) · p_T``: its β is our 1 − β.)
* Total variation (``"tvd"``): ``TV = ½ Σ_v |p_T(v) − p_S(v)|``, in [0, 1].

Two entry points share the four pure functions below:

* :func:`per_token_divergence` takes logits of shape ``(..., V)`` and returns ``(...)``.
* :func:`chunked_per_token_divergence` takes hidden states ``(N, H)`` and both ``lm_head`` weights and never builds
  the ``(N, V)`` logits: it projects ``chunk_size`` rows at a time, and its backward pass recomputes one chunk at a
  time (rows whose upstream gradient is zero, e.g. tokens a hook dropped, are skipped).

Numerics: logits are upcast to float32 before the softmax, so bfloat16 inputs are safe; log-probabilities are
clamped to the most negative finite float so that ``-inf`` logits (a masked vocabulary) give exact zeros instead of
``0 · inf = nan`` in values and gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .tiling import default_chunk_rows

DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")



def check_divergence(divergence: str, beta: float = 0.5) -> None:
    """Raise a ``ValueError`` naming the allowed values when ``divergence`` or ``beta`` is invalid."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}; choose one of {', '.join(map(repr, DIVERGENCES))}.")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1] (0 = forward KL, 1 = reverse KL, 0.5 = JSD); got {beta}.")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:  # also refuses NaN
        raise ValueError(f"temperature must be > 0, got {temperature}.")


def _safe_log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 ``log_softmax(logits / τ)`` with ``-inf`` replaced by the most negative finite float."""
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    return log_p.clamp(min=torch.finfo(log_p.dtype).min)


def forward_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(p_T ‖ p_S) = Σ p_T (log p_T − log p_S)`` over the last dimension."""
    return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)


def reverse_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(p_S ‖ p_T) = Σ p_S (log p_S − log p_T)`` over the last dimension."""
    return (student_log_probs.exp() * (student_log_probs - teacher_log_probs)).sum(-1)


def generalized_jsd(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float) -> torch.Tensor:
    """``β KL(p_T ‖ M) + (1 − β) KL(p_S ‖ M)`` with ``M = β p_T + (1 − β) p_S``; β = 0 / 1 give forward / reverse KL."""
    if beta == 0.0:
        return forward_kl(student_log_probs, teacher_log_probs)
    if beta == 1.0:
        return reverse_kl(student_log_probs, teacher_log_probs)
    log_m = torch.logaddexp(teacher_log_probs + math.log(beta), student_log_probs + math.log1p(-beta))
    kl_teacher = (teacher_log_probs.exp() * (teacher_log_probs - log_m)).sum(-1)
    kl_student = (student_log_probs.exp() * (student_log_probs - log_m)).sum(-1)
    return beta * kl_teacher + (1.0 - beta) * kl_student


def total_variation(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """``½ Σ |p_T − p_S|`` over the last dimension."""
    return 0.5 * (teacher_log_probs.exp() - student_log_probs.exp()).abs().sum(-1)


def divergence_from_log_probs(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, divergence: str = "jsd", beta: float = 0.5
) -> torch.Tensor:
    """Dispatch to one of the four pure per-token functions (inputs are log-probabilities over the last dim)."""
    if divergence == "fkl":
        return forward_kl(student_log_probs, teacher_log_probs)
    if divergence == "rkl":
        return reverse_kl(student_log_probs, teacher_log_probs)
    if divergence == "jsd":
        return generalized_jsd(student_log_probs, teacher_log_probs, beta)
    if divergence == "tvd":
        return total_variation(student_log_probs, teacher_log_probs)
    check_divergence(divergence, beta)  # raises with the list of allowed names
    raise AssertionError("unreachable")


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
        divergence: ``"fkl"``, ``"rkl"``, ``"jsd"`` or ``"tvd"`` (see the module docstring for the formulas).
        beta: JSD interpolation in [0, 1], TRL's convention (only used by ``"jsd"``).
        temperature: softmax temperature τ > 0 applied to both models.

    Returns:
        float32 tensor of shape ``student_logits.shape[:-1]``, in nats (TVD is unitless, in [0, 1]).
    """
    check_divergence(divergence, beta)
    _check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in "
            "shape; the vocabularies must match (slice both to the shared tokenizer's size)."
        )
    return divergence_from_log_probs(
        _safe_log_softmax(student_logits, temperature),
        _safe_log_softmax(teacher_logits, temperature),
        divergence,
        beta,
    )


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Shannon entropy ``H(p) = −Σ p log p`` of ``softmax(logits / τ)`` over the last dimension, in nats."""
    log_p = _safe_log_softmax(logits, temperature)
    return -(log_p.exp() * log_p).sum(-1)


# ----------------------------------------------------------------------------------------------------------------------
# Chunked path: hidden states + lm_head weights, (N, V) logits never materialized.
# ----------------------------------------------------------------------------------------------------------------------


def make_logit_transform(logit_scale: float = 1.0, softcap: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z ↦ softcap · tanh(scale · z / softcap)`` (or ``scale · z`` without softcap): Gemma/Cohere-style heads."""

    def transform(z: torch.Tensor) -> torch.Tensor:
        if logit_scale != 1.0:
            z = z * logit_scale
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        return z

    return transform


class _ChunkedDivergence(torch.autograd.Function):
    """Per-token divergence from hidden states, computed ``chunk`` rows at a time; backward recomputes per chunk."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, spec):
        n = h_s.shape[0]
        out = torch.empty(n, device=h_s.device, dtype=torch.float32)
        entropy = torch.empty(n, device=h_s.device, dtype=torch.float32)
        teacher_entropy = torch.empty(n if spec.teacher_entropy else 0, device=h_s.device, dtype=torch.float32)
        for start in range(0, n, spec.chunk):
            rows = slice(start, min(start + spec.chunk, n))
            chunk = spec.evaluate(h_s[rows], w_s, b_s, h_t[rows], w_t, b_t)
            out[rows], entropy[rows] = chunk.values, chunk.entropy
            if spec.teacher_entropy:
                teacher_entropy[rows] = chunk.teacher_entropy
        ctx.save_for_backward(h_s, w_s, b_s, h_t, w_t, b_t)
        ctx.spec = spec
        ctx.mark_non_differentiable(entropy, teacher_entropy)
        return out, entropy, teacher_entropy

    @staticmethod
    def backward(ctx, grad_out, _grad_entropy, _grad_teacher_entropy):
        h_s, w_s, b_s, h_t, w_t, b_t = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if grad_out is None or not any(needs):
            return None, None, None, None, None, None, None
        grads = _GradientAccumulator(h_s, w_s, b_s, needs, ctx.spec.vocab_size)
        # Only rows with a non-zero upstream gradient are recomputed (hard token selection saves the backward there).
        active = grad_out.nonzero().squeeze(-1)
        for start in range(0, active.numel(), ctx.spec.chunk):
            idx = active[start : start + ctx.spec.chunk]
            chunk = ctx.spec.evaluate(h_s[idx], w_s, b_s, h_t[idx], w_t, b_t, upstream=grad_out[idx].float())
            grads.add_chunk(idx, chunk.logit_grad)
            del chunk  # free this chunk's tiles before the next one is projected
        return (*grads.result(), None, None, None, None)


class _GradientAccumulator:
    """float32 gradients of the student's hidden states, head weight and bias, accumulated one chunk at a time.

    From the gradient ``G = ∂L/∂z`` of a chunk's student logits ``z = h W[:V]ᵀ + b[:V]``:
    ``∂L/∂h = G W[:V]``, ``∂L/∂W[:V] += Gᵀ h`` and ``∂L/∂b[:V] += Σ_rows G``, all updated in place.
    """

    def __init__(self, h_s, w_s, b_s, needs, vocab_size):
        self.h_s, self.w_s, self.b_s, self.vocab_size = h_s, w_s, b_s, vocab_size
        self.need_h, self.need_w, self.need_b = needs
        self.grad_h = torch.zeros_like(h_s, dtype=torch.float32) if self.need_h else None
        self.grad_w = torch.zeros_like(w_s, dtype=torch.float32) if self.need_w else None
        self.grad_b = torch.zeros_like(b_s, dtype=torch.float32) if self.need_b else None
        self.consumed = False

    def add_chunk(self, idx, logit_grad):
        """Add the contribution of rows ``idx`` whose student logits have gradient ``logit_grad`` (rows, V)."""
        v = self.vocab_size
        if self.need_h:
            w = self.w_s[:v]
            self.grad_h.index_add_(0, idx, (logit_grad.to(w.dtype) @ w).float())
        if self.need_w:
            self.grad_w[:v].addmm_(logit_grad.t(), self.h_s[idx].float())
        if self.need_b:
            self.grad_b[:v] += logit_grad.sum(0)

    def result(self, scale: torch.Tensor | None = None):
        """The gradients times ``scale`` in the inputs' dtypes; float32 buffers are scaled in place (no copy of the
        ``lm_head`` gradient), so this can be called once."""
        if self.consumed:
            raise RuntimeError("The chunked divergence's gradient was already used: backward twice is not supported.")
        self.consumed = True

        def cast(grad, ref):
            if grad is None:
                return None
            if scale is not None:
                grad.mul_(scale)
            return grad.to(ref.dtype)

        return cast(self.grad_h, self.h_s), cast(self.grad_w, self.w_s), cast(self.grad_b, self.b_s)


class _FusedChunkedDivergenceLoss(torch.autograd.Function):
    """``Σ_n w_n · D_n / normalizer`` with its gradient computed during the forward pass, one chunk at a time.

    When the per-token weights are known before the forward pass, the backward pass only scales the stored gradients:
    each chunk is projected once instead of twice (the recompute path projects it again in the backward pass).
    """

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, weights, normalizer, spec):
        n = h_s.shape[0]
        needs = (h_s.requires_grad, w_s.requires_grad, b_s is not None and b_s.requires_grad)
        grads = _GradientAccumulator(h_s, w_s, b_s, needs, spec.vocab_size)
        values = torch.empty(n, device=h_s.device, dtype=torch.float32)
        entropy = torch.empty(n, device=h_s.device, dtype=torch.float32)
        scale = weights.float() / normalizer
        for start in range(0, n, spec.chunk):
            idx = torch.arange(start, min(start + spec.chunk, n), device=h_s.device)
            chunk = spec.evaluate(h_s[idx], w_s, b_s, h_t[idx], w_t, b_t, upstream=scale[idx] if any(needs) else None)
            values[idx], entropy[idx] = chunk.values, chunk.entropy
            if any(needs):
                grads.add_chunk(idx, chunk.logit_grad)
            del chunk  # free this chunk's tiles before the next one is projected
        ctx.grads = grads
        ctx.mark_non_differentiable(values, entropy)
        return (values * scale).sum(), values, entropy

    @staticmethod
    def backward(ctx, grad_loss, _grad_values, _grad_entropy):
        grads = ctx.grads.result(grad_loss.float())
        return (*grads, None, None, None, None, None, None)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ_v a[n, v] b[n, v]`` for each row n, without an (n, V) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(-1)).view(-1)


def _log_softmax_(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """In place: ``z ← log_softmax(z / τ)``, ``-inf`` clamped to the most negative finite float (as in the dense path)."""
    if temperature != 1.0:
        z.div_(temperature)
    # Subtracting the row maximum first (exact for the large entries) and then the log of a sum in [1, V] keeps the
    # log-probabilities of likely tokens accurate to a few ulps; z − logsumexp(z) in one step rounds them at the
    # scale of |max z| (3x the float32 error of the gradients, measured against float64).
    z.sub_(z.amax(dim=-1, keepdim=True))
    z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))
    return z.clamp_(min=torch.finfo(z.dtype).min)


class _ChunkResult(NamedTuple):
    values: torch.Tensor  # (rows,) divergence D
    entropy: torch.Tensor  # (rows,) student entropy
    teacher_entropy: torch.Tensor | None  # (rows,) when asked
    logit_grad: torch.Tensor | None  # (rows, V) upstream · ∂D/∂z_student when an upstream gradient was given


class _ChunkSpec:
    """What the chunked functions need besides tensors (divergence, temperature, head transforms, sizes), and the
    per-chunk evaluation: values and the analytic gradient with respect to the student's logits.

    With ``u = transform(z)`` and ``log p = log_softmax(u / τ)``, the gradient of ``D`` with respect to ``u`` is
    ``(1/τ) p_S ⊙ (g − ⟨p_S, g⟩)`` where ``g = ∂D/∂p_S``. Per divergence:

    * forward KL ``Σ p_T (log p_T − log p_S)``: ``(p_S − p_T) / τ``;
    * reverse KL ``Σ p_S (log p_S − log p_T)``: ``p_S ⊙ (log p_S − log p_T − D) / τ``;
    * JSD(β) with ``M = β p_T + (1 − β) p_S``: ``g = (1 − β) log(p_S / M)`` (the terms through M cancel), so
      ``(1 − β) p_S ⊙ (log(p_S/M) − KL(p_S‖M)) / τ``;
    * TVD ``½ Σ |p_T − p_S|``: ``g = ½ sign(p_S − p_T)``.

    The head transform contributes ``∂u/∂z = scale`` (times ``1 − tanh²`` with a softcap). Computing this directly,
    with in-place updates, keeps about five (rows, V) float32 tiles alive instead of autograd's graph of a dozen, and
    adds the ``lm_head`` gradient into one float32 buffer with ``addmm_`` (no (V, H) temporary per chunk).
    """

    def __init__(
        self, divergence, beta, temperature, chunk, vocab_size, student_head, teacher_head, teacher_entropy
    ):
        self.divergence, self.beta, self.temperature, self.chunk = divergence, beta, temperature, chunk
        if divergence == "jsd" and beta in (0.0, 1.0):  # the endpoints are the KLs (as in generalized_jsd)
            self.divergence = "fkl" if beta == 0.0 else "rkl"
        self.teacher_entropy = teacher_entropy
        self.vocab_size = vocab_size
        self.student_head, self.teacher_head = student_head, teacher_head  # (logit_scale, softcap)

    def _transformed_logits(self, h, w, b, head):
        """``u = softcap · tanh(scale · z / softcap)`` (or ``scale · z``) of ``z = h W[:V]ᵀ + b``, as a fresh float32
        tile, and ``∂u/∂z`` (a float, or a tile with a softcap)."""
        scale, softcap = head
        w = w[: self.vocab_size]
        z = h.to(w.dtype) @ w.t()
        z = z.float() if z.dtype != torch.float32 else z
        if b is not None:
            z.add_(b[: self.vocab_size])
        if scale != 1.0:
            z.mul_(scale)
        if softcap is None:
            return z, scale
        z.div_(softcap).tanh_()
        derivative = (1.0 - z.square()).mul_(scale)
        return z.mul_(softcap), derivative

    def evaluate(self, h_s, w_s, b_s, h_t, w_t, b_t, upstream: torch.Tensor | None = None) -> _ChunkResult:
        """Divergences and student entropies of one chunk of rows; with ``upstream`` (rows,), also
        ``upstream · ∂D/∂z_S`` for the student's raw logits z_S."""
        with torch.no_grad():
            log_p_t = _log_softmax_(self._transformed_logits(h_t, w_t, b_t, self.teacher_head)[0], self.temperature)
            log_p_s, dudz = self._transformed_logits(h_s.detach(), w_s.detach(), b_s, self.student_head)
            log_p_s = _log_softmax_(log_p_s, self.temperature)
            p_s = log_p_s.exp()
            entropy = -_rowdot(p_s, log_p_s)
            teacher_entropy = None
            if self.teacher_entropy:
                p_t = log_p_t.exp()
                teacher_entropy = -_rowdot(p_t, log_p_t)
                del p_t
            values, grad = _DIVERGENCE_AND_GRADIENT[self.divergence](log_p_s, p_s, log_p_t, self.beta)
            if upstream is None:
                return _ChunkResult(values, entropy, teacher_entropy, None)
            grad.mul_((upstream / self.temperature).unsqueeze(-1))
            if torch.is_tensor(dudz) or dudz != 1.0:
                grad.mul_(dudz)
            return _ChunkResult(values, entropy, teacher_entropy, grad)


def _fkl_and_gradient(log_p_s, p_s, log_p_t, beta):
    """``Σ p_T (log p_T − log p_S)`` and ``p_S − p_T`` (the gradient w.r.t. the student's logits, times τ)."""
    p_t = log_p_t.exp()
    values = _rowdot(p_t, log_p_t) - _rowdot(p_t, log_p_s)
    return values, p_t.neg_().add_(p_s)


def _rkl_and_gradient(log_p_s, p_s, log_p_t, beta):
    """``Σ p_S (log p_S − log p_T)`` and ``p_S ⊙ (log p_S − log p_T − D)``; overwrites ``log_p_t``.

    The log-ratio ``d = log p_S − log p_T`` is shifted by its value ``c`` at the student's most likely token before
    the weighted sum: ``D = c + Σ p_S (d − c)`` and ``d − D = (d − c) − Σ p_S (d − c)``. Where the student is peaked on
    a token the teacher finds unlikely, ``d ≈ D`` can be 15-20 nats at that token and ``d − D`` cancels; the plain
    float32 sum carries an absolute error of ~1e-5 into that difference, the shifted one of ~1e-6 (as good as
    autograd through the dense log-softmax, measured against float64 in tests/test_divergences.py).
    """
    diff = log_p_t.neg_().add_(log_p_s)
    shift = diff.gather(-1, p_s.argmax(-1, keepdim=True))
    diff.sub_(shift)
    centred = _rowdot(p_s, diff)
    return centred + shift.squeeze(-1), diff.sub_(centred.unsqueeze(-1)).mul_(p_s)


def _jsd_and_gradient(log_p_s, p_s, log_p_t, beta):
    """``β KL(p_T‖M) + (1−β) KL(p_S‖M)`` and ``(1−β) p_S ⊙ (log(p_S/M) − KL(p_S‖M))``; overwrites ``log_p_t``."""
    log_m = log_p_t + math.log(beta)
    torch.logaddexp(log_m, log_p_s + math.log1p(-beta), out=log_m)
    p_t = log_p_t.exp()
    kl_teacher = _rowdot(p_t, log_p_t.sub_(log_m))
    del p_t
    student_gap = log_m.neg_().add_(log_p_s)  # log p_S − log M
    kl_student = _rowdot(p_s, student_gap)
    grad = student_gap.sub_(kl_student.unsqueeze(-1)).mul_(p_s).mul_(1.0 - beta)
    return beta * kl_teacher + (1.0 - beta) * kl_student, grad


def _tvd_and_gradient(log_p_s, p_s, log_p_t, beta):
    """``½ Σ |p_T − p_S|`` and ``p_S ⊙ (g − ⟨p_S, g⟩)`` with ``g = ½ sign(p_S − p_T)``; overwrites ``log_p_t``."""
    diff = log_p_t.exp_().neg_().add_(p_s)  # p_S − p_T
    values = 0.5 * torch.linalg.vector_norm(diff, ord=1, dim=-1)
    g = diff.sign_().mul_(0.5)
    return values, g.sub_(_rowdot(p_s, g).unsqueeze(-1)).mul_(p_s)


_DIVERGENCE_AND_GRADIENT = {
    "fkl": _fkl_and_gradient,
    "rkl": _rkl_and_gradient,
    "jsd": _jsd_and_gradient,
    "tvd": _tvd_and_gradient,
}


def _make_spec(
    student_hidden, teacher_hidden, student_weight, teacher_weight, divergence, beta, temperature,
    student_logit_scale, teacher_logit_scale, student_softcap, teacher_softcap, vocab_size, chunk_size,
    return_teacher_entropy,
) -> tuple[_ChunkSpec, int]:
    """Validate the arguments of the chunked functions (errors name the fix) and build their :class:`_ChunkSpec`."""
    check_divergence(divergence, beta)
    _check_temperature(temperature)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}.")
    if student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise ValueError(
            f"Student and teacher hidden states have {student_hidden.shape[0]} and {teacher_hidden.shape[0]} rows; "
            "they must be the same token positions."
        )
    if vocab_size is None:
        if student_weight.shape[0] != teacher_weight.shape[0]:
            raise ValueError(
                f"The student head has {student_weight.shape[0]} rows and the teacher head {teacher_weight.shape[0]}. "
                "Pass vocab_size=len(tokenizer) to compare the shared vocabulary."
            )
        vocab_size = student_weight.shape[0]
    if not 0 < vocab_size <= min(student_weight.shape[0], teacher_weight.shape[0]):
        raise ValueError(
            f"vocab_size={vocab_size} must be in [1, rows of the smaller head]; the heads have "
            f"{student_weight.shape[0]} and {teacher_weight.shape[0]} rows."
        )
    chunk = chunk_size if chunk_size is not None else default_chunk_rows(vocab_size)
    spec = _ChunkSpec(
        divergence,
        beta,
        temperature,
        chunk,
        vocab_size,
        (student_logit_scale, student_softcap),
        (teacher_logit_scale, teacher_softcap),
        return_teacher_entropy,
    )
    return spec, vocab_size


def chunked_per_token_divergence(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_weight: torch.Tensor,
    divergence: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    token_weights: torch.Tensor | None = None,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
    return_entropy: bool = False,
    return_teacher_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Per-token divergence from hidden states and ``lm_head`` weights without materializing ``(N, V)`` logits.

    Equal in value and gradient (to float32 rounding) to
    ``per_token_divergence(student_hidden @ student_weight.T, teacher_hidden @ teacher_weight.T, ...)``.
    The gradient flows to the student's hidden states, weight and bias only; the teacher is treated as a constant.

    Args:
        student_hidden: ``(N, H_s)`` student hidden states (the input of its ``lm_head``).
        teacher_hidden: ``(N, H_t)`` teacher hidden states at the same positions (H_t may differ from H_s).
        student_weight: ``(V_s, H_s)`` student ``lm_head`` weight.
        teacher_weight: ``(V_t, H_t)`` teacher ``lm_head`` weight.
        divergence, beta, temperature: as in :func:`per_token_divergence`.
        student_bias, teacher_bias: optional ``lm_head`` biases.
        student_logit_scale, teacher_logit_scale, student_softcap, teacher_softcap: head post-processing
            ``softcap · tanh(scale · z / softcap)`` applied before the temperature (Gemma / Cohere heads).
        token_weights: optional ``(N,)`` weights; the result is ``token_weights · D``. Rows of weight 0 are skipped in
            the backward pass.
        vocab_size: compare only the first ``vocab_size`` entries of both heads (for heads padded past the tokenizer,
            e.g. Qwen2.5-7B's 152064 rows against 151936). Defaults to the common size, which must then be equal.
        chunk_size: rows per chunk; defaults to ``max(48, 2**22 // V)`` (a 16 MiB float32 tile, see :mod:`trl_opd.tiling`).
        return_entropy: also return the student's per-token entropy (no gradient).
        return_teacher_entropy: also return the teacher's per-token entropy (no gradient), after the student's.

    Returns:
        ``(N,)`` float32 divergences (weighted when ``token_weights`` is given), then, when asked, the ``(N,)`` student
        entropies and the ``(N,)`` teacher entropies, in that order.
    """
    spec, vocab_size = _make_spec(
        student_hidden, teacher_hidden, student_weight, teacher_weight, divergence, beta, temperature,
        student_logit_scale, teacher_logit_scale, student_softcap, teacher_softcap, vocab_size, chunk_size,
        return_teacher_entropy,
    )
    values, entropy, teacher_entropy = _ChunkedDivergence.apply(
        student_hidden, student_weight, student_bias, teacher_hidden.detach(), teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(), spec,
    )
    if token_weights is not None:
        values = values * token_weights.to(values.dtype)
    extras = (entropy,) * return_entropy + (teacher_entropy,) * return_teacher_entropy
    return (values, *extras) if extras else values


def chunked_divergence_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_weight: torch.Tensor,
    divergence: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
    *,
    token_weights: torch.Tensor | None = None,
    normalizer: float | torch.Tensor = 1.0,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss ``Σ_n w_n · D_n / normalizer`` in one pass: its gradient is computed chunk by chunk in the forward pass.

    Same value and gradients as ``(chunked_per_token_divergence(...) * token_weights).sum() / normalizer``, but each
    chunk of logits is projected once (the per-token function projects it again in its backward pass). Use it when the
    weights are known before the forward pass (without token-importance weighting, or with fixed weights).

    Returns:
        ``(loss, values, student_entropy)``: the scalar loss (differentiable), and the ``(N,)`` per-token divergences
        and student entropies (detached), e.g. for logging or a curriculum.
    """
    spec, vocab_size = _make_spec(
        student_hidden, teacher_hidden, student_weight, teacher_weight, divergence, beta, temperature,
        student_logit_scale, teacher_logit_scale, student_softcap, teacher_softcap, vocab_size, chunk_size, False,
    )
    if token_weights is None:
        token_weights = torch.ones(student_hidden.shape[0], device=student_hidden.device)
    normalizer = normalizer.to(student_hidden.device).float() if torch.is_tensor(normalizer) else float(normalizer)
    return _FusedChunkedDivergenceLoss.apply(
        student_hidden, student_weight, student_bias, teacher_hidden.detach(), teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(), token_weights.detach(), normalizer, spec,
    )


@torch.no_grad()
def chunked_token_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``log softmax(h W^T / τ)[token]`` for each of the ``(N, H)`` hidden states, ``chunk_size`` rows at a time.

    Returns ``(N,)`` float32 log-probabilities of ``token_ids`` (no gradient): e.g. for the perplexity of a rollout,
    ``exp(−mean log p)``.
    """
    _check_temperature(temperature)
    transform = make_logit_transform(logit_scale, softcap)
    chunk = chunk_size or default_chunk_rows(weight.shape[0])
    out = torch.empty(hidden.shape[0], device=hidden.device, dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        z = hidden[rows].to(weight.dtype) @ weight.t()
        if bias is not None:
            z = z + bias
        log_p = _safe_log_softmax(transform(z.float()), temperature)
        out[rows] = log_p.gather(-1, token_ids[rows].long().unsqueeze(-1)).squeeze(-1)
    return out
