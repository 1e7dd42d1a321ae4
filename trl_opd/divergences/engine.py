r"""The chunked engine: per-token divergences from hidden states and ``lm_head`` weights, never building ``(N, V)``.

The hidden states are projected through each head ``chunk`` rows at a time (default ``max(48, 2**22 // V)``, a 16 MiB
float32 tile, :mod:`trl_opd.tiling`). For each chunk, the divergence's module (:mod:`.registry`) gives the values and
``G = τ · ∂D/∂u_S`` in closed form, in place on the chunk's tiles; the head transform contributes ``∂u/∂z = scale``
(times ``1 − tanh²`` with a softcap). From the logit gradient, ``∂L/∂h = G W``, ``∂L/∂W += Gᵀ h`` (one ``addmm_`` into
a single float32 buffer, no (V, H) temporary per chunk) and ``∂L/∂b += Σ_rows G``.

Two autograd functions:

* :func:`chunked_per_token_divergence` returns ``(N,)`` values with a gradient; its backward pass projects each chunk
  again and skips rows whose upstream gradient is zero (tokens a hook weighted 0);
* :func:`chunked_divergence_loss` returns ``Σ w_n D_n / normalizer`` and computes the gradient while it projects each
  chunk in the forward pass, so every chunk is projected once (the weights must be known up front).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..tiling import default_chunk_rows
from . import topk
from .heads import LMHead, make_logit_transform, transformed_logits
from .ops import check_temperature, log_softmax_, rowdot, safe_log_softmax
from .registry import Divergence, check_top_k, resolve
from .topk import TopKTargets


class _ChunkedDivergence(torch.autograd.Function):
    """Per-token divergence from hidden states, computed ``chunk`` rows at a time; backward recomputes per chunk.

    The teacher side lives on ``spec`` (no gradient flows to it)."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, spec):
        n = h_s.shape[0]
        out = torch.empty(n, device=h_s.device, dtype=torch.float32)
        entropy = torch.empty(n, device=h_s.device, dtype=torch.float32)
        teacher_entropy = torch.empty(n if spec.teacher_entropy else 0, device=h_s.device, dtype=torch.float32)
        for start in range(0, n, spec.chunk):
            idx = torch.arange(start, min(start + spec.chunk, n), device=h_s.device)
            chunk = spec.evaluate(idx, h_s[idx], w_s, b_s)
            out[idx], entropy[idx] = chunk.values, chunk.entropy
            if spec.teacher_entropy:
                teacher_entropy[idx] = chunk.teacher_entropy
        ctx.save_for_backward(h_s, w_s, b_s)
        ctx.spec = spec
        ctx.mark_non_differentiable(entropy, teacher_entropy)
        return out, entropy, teacher_entropy

    @staticmethod
    def backward(ctx, grad_out, _grad_entropy, _grad_teacher_entropy):
        h_s, w_s, b_s = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if grad_out is None or not any(needs):
            return None, None, None, None
        grads = _GradientAccumulator(h_s, w_s, b_s, needs, ctx.spec.vocab_size)
        # Only rows with a non-zero upstream gradient are recomputed (hard token selection saves the backward there).
        active = grad_out.nonzero().squeeze(-1)
        for start in range(0, active.numel(), ctx.spec.chunk):
            idx = active[start : start + ctx.spec.chunk]
            chunk = ctx.spec.evaluate(idx, h_s[idx], w_s, b_s, upstream=grad_out[idx].float())
            grads.add_chunk(idx, chunk.logit_grad)
            del chunk  # free this chunk's tiles before the next one is projected
        return (*grads.result(), None)


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
    def forward(ctx, h_s, w_s, b_s, weights, normalizer, spec):
        n = h_s.shape[0]
        needs = (h_s.requires_grad, w_s.requires_grad, b_s is not None and b_s.requires_grad)
        grads = _GradientAccumulator(h_s, w_s, b_s, needs, spec.vocab_size)
        values = torch.empty(n, device=h_s.device, dtype=torch.float32)
        entropy = torch.empty(n, device=h_s.device, dtype=torch.float32)
        scale = weights.float() / normalizer
        for start in range(0, n, spec.chunk):
            idx = torch.arange(start, min(start + spec.chunk, n), device=h_s.device)
            chunk = spec.evaluate(idx, h_s[idx], w_s, b_s, upstream=scale[idx] if any(needs) else None)
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
        return (*grads, None, None, None)


class _ChunkResult(NamedTuple):
    values: torch.Tensor  # (rows,) divergence D
    entropy: torch.Tensor  # (rows,) student entropy
    teacher_entropy: torch.Tensor | None  # (rows,) when asked
    logit_grad: torch.Tensor | None  # (rows, V) upstream · ∂D/∂z_student when an upstream gradient was given


class _HiddenTeacher:
    """The teacher given by its hidden states and head: per chunk a ``(rows, V)`` log-probability tile, or, with
    ``top_k``, that tile reduced at once to its :class:`~.topk.TopKTargets` (the tile is freed before the student's)."""

    def __init__(self, hidden: torch.Tensor, head: LMHead, vocab_size: int, temperature: float, top_k: int | None):
        self.hidden, self.head, self.vocab_size, self.temperature, self.top_k = (
            hidden,
            head,
            vocab_size,
            temperature,
            top_k,
        )

    def chunk(self, idx: torch.Tensor) -> torch.Tensor | TopKTargets:
        tile = log_softmax_(transformed_logits(self.hidden[idx], self.head, self.vocab_size)[0], self.temperature)
        return tile if self.top_k is None else TopKTargets.from_log_probs(tile, self.top_k)


class _TargetsTeacher:
    """The teacher given by precomputed top-k targets (an offline cache, a teacher server)."""

    def __init__(self, targets: TopKTargets):
        self.targets = targets

    def chunk(self, idx: torch.Tensor) -> TopKTargets:
        return self.targets.select(idx.to(self.targets.ids.device)).to(idx.device)


class _ChunkSpec:
    """What the chunked functions need besides the student's tensors (divergence, temperature, head transform,
    sizes, the teacher side), and the per-chunk evaluation: the values and the analytic gradient with respect to the
    student's raw logits ``z``."""

    def __init__(
        self, divergence: Divergence, beta, temperature, chunk, vocab_size, student_transform, teacher, teacher_entropy
    ):
        self.divergence, self.beta, self.temperature, self.chunk = divergence, beta, temperature, chunk
        self.vocab_size = vocab_size
        self.student_transform = student_transform  # (scale, softcap)
        self.teacher = teacher  # _HiddenTeacher or _TargetsTeacher
        self.teacher_entropy = teacher_entropy

    def evaluate(self, idx, h_s, w_s, b_s, upstream: torch.Tensor | None = None) -> _ChunkResult:
        """Divergences and student entropies of the chunk of rows ``idx``; with ``upstream`` (rows,), also
        ``upstream · ∂D/∂z_S`` for the student's raw logits z_S."""
        with torch.no_grad():
            target = self.teacher.chunk(idx)
            student_head = LMHead(w_s.detach(), b_s, *self.student_transform)
            log_p_s, dudz = transformed_logits(h_s.detach(), student_head, self.vocab_size)
            log_p_s = log_softmax_(log_p_s, self.temperature)
            p_s = log_p_s.exp()
            entropy = -rowdot(p_s, log_p_s)
            teacher_entropy = None
            if isinstance(target, TopKTargets):
                del p_s
                values, grad, teacher_entropy = topk.value_and_gradient(self.divergence, log_p_s, target, self.beta)
            else:
                if self.teacher_entropy:
                    p_t = target.exp()
                    teacher_entropy = -rowdot(p_t, target)
                    del p_t
                values, grad = self.divergence.value_and_gradient(log_p_s, p_s, target, self.beta)
            if upstream is None:
                return _ChunkResult(values, entropy, teacher_entropy, None)
            grad.mul_((upstream / self.temperature).unsqueeze(-1))
            if torch.is_tensor(dudz) or dudz != 1.0:
                grad.mul_(dudz)
            return _ChunkResult(values, entropy, teacher_entropy, grad)


_HEAD_KWARGS = ("bias", "logit_scale", "softcap")


def _as_head(weight, role: str, head_kwargs: dict) -> LMHead:
    """An :class:`LMHead` from a head (kept) or a weight tensor plus the legacy ``<role>_bias`` / ``_logit_scale`` /
    ``_softcap`` keywords."""
    bias, scale, softcap = (head_kwargs.get(f"{role}_{k}") for k in _HEAD_KWARGS)
    given = [
        k for k, set_ in zip(_HEAD_KWARGS, (bias is not None, scale not in (None, 1.0), softcap is not None)) if set_
    ]
    if isinstance(weight, LMHead):
        if given:
            raise ValueError(f"Pass the {role}'s bias, scale and softcap in its LMHead, not also as {sorted(given)}.")
        return weight
    return LMHead(weight, bias, 1.0 if scale is None else float(scale), softcap)


@dataclass(frozen=True)
class _Options:
    """The settings of one call of the public chunked functions, besides the tensors and the heads."""

    divergence: str
    beta: float
    temperature: float
    vocab_size: int | None
    chunk_size: int | None
    teacher_top_k: int | None
    teacher_entropy: bool = False


def _make_spec(
    student_hidden, student: LMHead, teacher_hidden, teacher_weight, head_kwargs: dict, options: _Options
) -> _ChunkSpec:
    """Validate the arguments of the chunked functions (errors name the fix) and build their :class:`_ChunkSpec`.

    The teacher is ``teacher_hidden`` ``(N, H_t)`` with its head ``teacher_weight`` (a weight or an
    :class:`LMHead`), or precomputed :class:`~.topk.TopKTargets` (then ``teacher_weight`` is ``None``)."""
    beta, temperature, vocab_size = options.beta, options.temperature, options.vocab_size
    record = resolve(options.divergence, beta)
    check_temperature(temperature)
    if options.chunk_size is not None and options.chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {options.chunk_size}.")
    check_top_k(options.teacher_top_k)
    n_teacher = len(teacher_hidden) if isinstance(teacher_hidden, TopKTargets) else teacher_hidden.shape[0]
    if student_hidden.shape[0] != n_teacher:
        raise ValueError(
            f"Student and teacher hidden states have {student_hidden.shape[0]} and {n_teacher} rows; "
            "they must be the same token positions."
        )
    if isinstance(teacher_hidden, TopKTargets):
        if teacher_weight is not None:
            raise ValueError("Pass either teacher hidden states with their head, or TopKTargets (and no teacher head).")
        vocab_size = vocab_size or student.rows
        if not 0 < vocab_size <= student.rows:
            raise ValueError(f"vocab_size={vocab_size} must be in [1, {student.rows}] (the student head's rows).")
        teacher = _TargetsTeacher(teacher_hidden)
    else:
        head = _as_head(teacher_weight, "teacher", head_kwargs).detached()
        if vocab_size is None:
            if student.rows != head.rows:
                raise ValueError(
                    f"The student head has {student.rows} rows and the teacher head {head.rows}. "
                    "Pass vocab_size=len(tokenizer) to compare the shared vocabulary."
                )
            vocab_size = student.rows
        if not 0 < vocab_size <= min(student.rows, head.rows):
            raise ValueError(
                f"vocab_size={vocab_size} must be in [1, rows of the smaller head]; the heads have "
                f"{student.rows} and {head.rows} rows."
            )
        teacher = _HiddenTeacher(teacher_hidden.detach(), head, vocab_size, temperature, options.teacher_top_k)
    chunk = options.chunk_size if options.chunk_size is not None else default_chunk_rows(vocab_size)
    return _ChunkSpec(record, beta, temperature, chunk, vocab_size, student.transform, teacher, options.teacher_entropy)


def chunked_per_token_divergence(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor | TopKTargets,
    student_weight: torch.Tensor | LMHead,
    teacher_weight: torch.Tensor | LMHead | None,
    divergence: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
    *,
    token_weights: torch.Tensor | None = None,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
    teacher_top_k: int | None = None,
    return_entropy: bool = False,
    return_teacher_entropy: bool = False,
    **head_kwargs,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Per-token divergence from hidden states and ``lm_head`` weights without materializing ``(N, V)`` logits.

    Equal in value and gradient (to float32 rounding) to
    ``per_token_divergence(student_hidden @ student_weight.T, teacher_hidden @ teacher_weight.T, ...)``.
    The gradient flows to the student's hidden states, weight and bias only; the teacher is treated as a constant.

    Args:
        student_hidden: ``(N, H_s)`` student hidden states (the input of its ``lm_head``).
        teacher_hidden: ``(N, H_t)`` teacher hidden states at the same positions (H_t may differ from H_s), or the
            teacher's precomputed :class:`~trl_opd.divergences.topk.TopKTargets` (then ``teacher_weight=None``).
        student_weight: the student's :class:`LMHead`, or its ``(V_s, H_s)`` ``lm_head`` weight.
        teacher_weight: the teacher's :class:`LMHead`, or its ``(V_t, H_t)`` weight.
        divergence, beta, temperature: as in :func:`per_token_divergence`.
        token_weights: optional ``(N,)`` weights; the result is ``token_weights · D``. Rows of weight 0 are skipped in
            the backward pass.
        vocab_size: compare only the first ``vocab_size`` entries of both heads (for heads padded past the tokenizer,
            e.g. Qwen2.5-7B's 152064 rows against 151936). Defaults to the common size, which must then be equal.
        chunk_size: rows per chunk; defaults to ``max(48, 2**22 // V)`` (a 16 MiB float32 tile, see
            :mod:`trl_opd.tiling`).
        teacher_top_k: compute the divergence on the teacher's top-k tokens and one tail bin
            (:mod:`trl_opd.divergences.topk`); ``None`` is the exact full-vocabulary path.
        return_entropy: also return the student's per-token entropy (no gradient).
        return_teacher_entropy: also return the teacher's per-token entropy (no gradient; with top-k, that of its
            k + 1 bins), after the student's.
        **head_kwargs: with weight tensors, ``student_bias``, ``teacher_bias``, ``student_logit_scale``,
            ``teacher_logit_scale``, ``student_softcap``, ``teacher_softcap`` (the fields of an :class:`LMHead`).

    Returns:
        ``(N,)`` float32 divergences (weighted when ``token_weights`` is given), then, when asked, the ``(N,)`` student
        entropies and the ``(N,)`` teacher entropies, in that order.
    """
    options = _Options(divergence, beta, temperature, vocab_size, chunk_size, teacher_top_k, return_teacher_entropy)
    student, spec = _prepare(student_hidden, teacher_hidden, student_weight, teacher_weight, head_kwargs, options)
    values, entropy, teacher_entropy = _ChunkedDivergence.apply(student_hidden, student.weight, student.bias, spec)
    if token_weights is not None:
        values = values * token_weights.to(values.dtype)
    extras = (entropy,) * return_entropy + (teacher_entropy,) * return_teacher_entropy
    return (values, *extras) if extras else values


def chunked_divergence_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor | TopKTargets,
    student_weight: torch.Tensor | LMHead,
    teacher_weight: torch.Tensor | LMHead | None,
    divergence: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
    *,
    token_weights: torch.Tensor | None = None,
    normalizer: float | torch.Tensor = 1.0,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
    teacher_top_k: int | None = None,
    **head_kwargs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss ``Σ_n w_n · D_n / normalizer`` in one pass: its gradient is computed chunk by chunk in the forward pass.

    Same value and gradients as ``(chunked_per_token_divergence(...) * token_weights).sum() / normalizer``, but each
    chunk of logits is projected once (the per-token function projects it again in its backward pass). Use it when the
    weights are known before the forward pass (without token-importance weighting, or with fixed weights). Heads, the
    teacher side and the other arguments as in :func:`chunked_per_token_divergence`.

    Returns:
        ``(loss, values, student_entropy)``: the scalar loss (differentiable), and the ``(N,)`` per-token divergences
        and student entropies (detached), e.g. for logging or a curriculum.
    """
    options = _Options(divergence, beta, temperature, vocab_size, chunk_size, teacher_top_k)
    student, spec = _prepare(student_hidden, teacher_hidden, student_weight, teacher_weight, head_kwargs, options)
    if token_weights is None:
        token_weights = torch.ones(student_hidden.shape[0], device=student_hidden.device)
    normalizer = normalizer.to(student_hidden.device).float() if torch.is_tensor(normalizer) else float(normalizer)
    return _FusedChunkedDivergenceLoss.apply(
        student_hidden, student.weight, student.bias, token_weights.detach(), normalizer, spec
    )


def _prepare(student_hidden, teacher_hidden, student_weight, teacher_weight, head_kwargs, options: _Options):
    """The student's :class:`LMHead` and the :class:`_ChunkSpec` of a call of the public functions."""
    unknown = set(head_kwargs) - {f"{role}_{k}" for role in ("student", "teacher") for k in _HEAD_KWARGS}
    if unknown:
        raise TypeError(f"Unexpected keyword arguments {sorted(unknown)}.")
    student = _as_head(student_weight, "student", head_kwargs)
    return student, _make_spec(student_hidden, student, teacher_hidden, teacher_weight, head_kwargs, options)


@torch.no_grad()
def chunked_token_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor | LMHead,
    token_ids: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """``log softmax(u / τ)[token]`` for each of the ``(N, H)`` hidden states, ``chunk_size`` rows at a time.

    ``weight``: an :class:`LMHead`, or a weight tensor with ``bias`` / ``logit_scale`` / ``softcap``. ``vocab_size``
    keeps the first rows of the head only (a head padded past the tokenizer). Returns ``(N,)`` float32
    log-probabilities of ``token_ids`` (no gradient): e.g. for the perplexity of a rollout, ``exp(−mean log p)``.
    """
    check_temperature(temperature)
    head = weight if isinstance(weight, LMHead) else LMHead(weight, bias, logit_scale, softcap)
    vocab_size = vocab_size or head.rows
    transform = make_logit_transform(head.scale, head.softcap)
    chunk = chunk_size or default_chunk_rows(vocab_size)
    w, b = head.weight[:vocab_size], None if head.bias is None else head.bias[:vocab_size]
    out = torch.empty(hidden.shape[0], device=hidden.device, dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        z = hidden[rows].to(w.dtype) @ w.t()
        if b is not None:
            z = z + b
        log_p = safe_log_softmax(transform(z.float()), temperature)
        out[rows] = log_p.gather(-1, token_ids[rows].long().unsqueeze(-1)).squeeze(-1)
    return out
