r"""Top-k + tail: every divergence computed exactly on the teacher's k most likely tokens and one tail bin.

At one position let ``I`` be the teacher's top-k token ids. Both distributions are coarse-grained to k + 1 bins,
``q(i) = p(i)`` for ``i ∈ I`` and ``q(tail) = Σ_{v ∉ I} p(v)``, and the divergence is the registry's own formula on
those bins, ``D(q_T ‖ q_S)``. It needs the teacher only through ``I``, ``log p_T(I)`` and ``log q_T(tail)``: a cache of
8k + 4 bytes per token (:mod:`trl_opd.teachers.cache`), or a live teacher reduced chunk by chunk.

What each divergence becomes (data processing: a coarse-graining never increases an f-divergence):

* **FKL**: ``KL(q_T ‖ q_S) ≤ KL(p_T ‖ p_S)``, equal when the teacher's tail is empty or the two within-tail
  distributions agree. The gap is the tail's ``q_T(tail) · KL(p_T(·|tail) ‖ p_S(·|tail))``: small when the teacher's
  tail mass is. The student's tail tokens share one gradient, in proportion to their within-tail probabilities.
* **RKL**: ``KL(q_S ‖ q_T) ≤ KL(p_S ‖ p_T)``, with a gap of ``q_S(tail) · KL(p_S(·|tail) ‖ p_T(·|tail))``: where the
  student puts mass outside the teacher's top-k, that mass is judged only as a whole. A student can lower it by moving
  mass into I, which is what the full RKL also asks; but the ordering of its tail tokens is no longer taught.
* **JSD(β)** and **TVD**: both bounded f-divergences, lower bounds of the full ones by the same argument.

With k ≥ V the tail is empty and every value and gradient equals the full path's (tests/test_topk.py).

Gradient (closed form, like the full path): the registry's ``value_and_gradient`` on the (rows, k + 1) bins gives
``G_b = τ ∂D/∂ũ_b`` for bin "logits" ``ũ_b = log q_S(b)``; since ``∂ũ_b/∂u_v = 1[v ∈ b] · p_S(v) / q_S(b)``,

.. math::

    τ ∂D/∂u_v = G_v \quad (v ∈ I), \qquad τ ∂D/∂u_v = G_{tail} · p_S(v) / q_S(tail) \quad (v ∉ I).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .heads import LMHead, transformed_logits
from .ops import log_softmax_, rowdot


_MIN = torch.finfo(torch.float32).min


@dataclass
class TopKTargets:
    """The teacher's next-token distribution at N positions, coarse-grained to its top-k tokens and a tail bin.

    Attributes:
        ids: ``(N, k)`` int64 token ids, the teacher's most likely first.
        log_probs: ``(N, k)`` float32 ``log p_T`` of those ids (at the temperature the targets were made with).
        tail_log_prob: ``(N,)`` float32 ``log q_T(tail) = log Σ_{v ∉ I} p_T(v)`` (very negative when the top-k hold
            all the mass).
    """

    ids: torch.Tensor
    log_probs: torch.Tensor
    tail_log_prob: torch.Tensor

    def __post_init__(self):
        n, k = self.ids.shape
        if self.log_probs.shape != (n, k) or self.tail_log_prob.shape != (n,):
            raise ValueError(
                f"Top-k targets need ids and log_probs of one shape (N, k) and a tail of shape (N,); got "
                f"{tuple(self.ids.shape)}, {tuple(self.log_probs.shape)}, {tuple(self.tail_log_prob.shape)}."
            )

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    def __len__(self) -> int:
        return self.ids.shape[0]

    def select(self, rows) -> TopKTargets:
        return TopKTargets(self.ids[rows], self.log_probs[rows], self.tail_log_prob[rows])

    def to(self, device) -> TopKTargets:
        return TopKTargets(self.ids.to(device), self.log_probs.to(device), self.tail_log_prob.to(device))

    @staticmethod
    def cat(parts: list[TopKTargets]) -> TopKTargets:
        return TopKTargets(*(torch.cat([getattr(p, f) for p in parts]) for f in ("ids", "log_probs", "tail_log_prob")))

    @classmethod
    def from_log_probs(cls, log_probs: torch.Tensor, k: int) -> TopKTargets:
        """From ``(N, V)`` log-probabilities (overwritten: they become the tail's scratch space)."""
        k = min(k, log_probs.shape[-1])
        top, ids = log_probs.topk(k, dim=-1)
        log_probs.scatter_(-1, ids, float("-inf"))
        tail = torch.logsumexp(log_probs, dim=-1).clamp(min=_MIN)
        return cls(ids, top, tail)


@torch.no_grad()
def topk_targets_from_hidden(
    hidden: torch.Tensor, head: LMHead, k: int, vocab_size: int, temperature: float = 1.0, chunk: int | None = None
) -> TopKTargets:
    """The teacher's top-k targets at ``(N, H)`` hidden states, ``chunk`` rows at a time (no ``(N, V)`` tensor)."""
    from ..tiling import default_chunk_rows

    chunk = chunk or default_chunk_rows(vocab_size)
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        tile = log_softmax_(transformed_logits(hidden[start : start + chunk], head, vocab_size)[0], temperature)
        parts.append(TopKTargets.from_log_probs(tile, k))
    if not parts:
        empty = torch.empty(0, min(k, vocab_size), dtype=torch.long, device=hidden.device)
        return TopKTargets(empty, empty.float(), torch.empty(0, device=hidden.device))
    return TopKTargets.cat(parts)


def bins(log_p: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log q over the k + 1 bins, log q(tail))`` of ``(rows, V)`` log-probabilities (restored after use)."""
    top = log_p.gather(-1, ids)
    log_p.scatter_(-1, ids, float("-inf"))
    tail = torch.logsumexp(log_p, dim=-1).clamp(min=_MIN)
    log_p.scatter_(-1, ids, top)
    return torch.cat([top, tail.unsqueeze(-1)], dim=-1), tail


def value_and_gradient(record, log_p_s: torch.Tensor, targets: TopKTargets, beta: float):
    """``(values, G, teacher_entropy)`` of one chunk on the k + 1 bins: ``G = τ · ∂D/∂u_S`` over the full vocabulary
    (in place on ``log_p_s``), ``teacher_entropy`` the entropy of the teacher's bins (a lower bound of its entropy)."""
    log_q_s, tail_s = bins(log_p_s, targets.ids)
    log_q_t = torch.cat([targets.log_probs, targets.tail_log_prob.unsqueeze(-1)], dim=-1).float().clamp(min=_MIN)
    q_t = log_q_t.exp()
    teacher_entropy = -rowdot(q_t, log_q_t)
    values, grad_bins = record.value_and_gradient(log_q_s, log_q_s.exp(), log_q_t, beta)
    # Tail tokens: G_tail · p(v) / q(tail) (≤ 1, clamped so an empty tail cannot overflow); top-k tokens: their G.
    grad = log_p_s.sub_(tail_s.unsqueeze(-1)).clamp_(max=0.0).exp_().mul_(grad_bins[:, -1:])
    grad.scatter_(-1, targets.ids, grad_bins[:, :-1])
    return values, grad, teacher_entropy
