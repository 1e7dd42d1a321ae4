"""The distillation loss of a micro-batch whose tokens come from one or several teacher sides.

``L = Σ_tokens w_t · D_t / normalizer``: each :class:`~trl_opd.teachers.routing.TeacherSide` (a live teacher's rows,
the cache's rows) is one call of the chunked engine, and the sides' losses add up. With per-token weights that depend
on the divergences (TIP), the per-token values of every side are gathered back into token order first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..divergences import LMHead, chunked_divergence_loss, chunked_per_token_divergence
from ..teachers.routing import TeacherSide


def _covers_in_order(side: TeacherSide, n: int) -> bool:
    positions = side.positions
    return positions.numel() == n and bool(torch.equal(positions, torch.arange(n, device=positions.device)))


def distillation_loss(
    h_s: torch.Tensor,
    student_head: LMHead,
    sides: list[TeacherSide],
    *,
    divergence: str,
    beta: float,
    temperature: float,
    vocab_size: int,
    normalizer,
    top_k: int | None = None,
    weigh: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, tuple[float, int]]]:
    """``(loss, values, student_entropy, per_side)`` over the ``(N, H)`` student hidden states ``h_s``.

    ``weigh(values, teacher_entropy, student_entropy) -> weights`` (TIP) makes the loss ``Σ w D / normalizer`` with
    differentiable per-token values (the backward pass skips weight-0 tokens); without it every weight is 1 and each
    side's gradient is computed in its forward pass (the fused loss). ``per_side``: ``{label: (Σ D, tokens)}``.
    """
    n = h_s.shape[0]
    common = dict(vocab_size=vocab_size)
    runs = []
    for side in sides:
        rows = slice(None) if _covers_in_order(side, n) else side.positions
        k = top_k if side.targets is None else None  # precomputed targets are top-k already
        runs.append((side, rows, dict(common, teacher_top_k=k)))
    per_side = {}
    if weigh is None:
        loss = h_s.new_zeros((), dtype=torch.float32)
        values = torch.zeros(n, device=h_s.device)
        entropy = torch.zeros(n, device=h_s.device)
        for side, rows, kwargs in runs:
            part_loss, part_values, part_entropy = chunked_divergence_loss(
                h_s[rows],
                side.teacher,
                student_head,
                side.head,
                divergence,
                beta,
                temperature,
                normalizer=normalizer,
                **kwargs,
            )
            loss = loss + part_loss
            values[rows], entropy[rows] = part_values, part_entropy
            per_side[side.label] = (float(part_values.sum()), part_values.numel())
        return loss, values, entropy, per_side
    parts = []
    for side, rows, kwargs in runs:
        part = chunked_per_token_divergence(
            h_s[rows],
            side.teacher,
            student_head,
            side.head,
            divergence,
            beta,
            temperature,
            return_entropy=True,
            return_teacher_entropy=True,
            **kwargs,
        )
        parts.append(part)
        per_side[side.label] = (float(part[0].detach().sum()), part[0].numel())
    if len(parts) == 1 and isinstance(runs[0][1], slice):
        values, entropy, teacher_entropy = parts[0]
    else:
        inverse = torch.argsort(torch.cat([side.positions for side in sides]))
        values, entropy, teacher_entropy = (torch.cat([p[i] for p in parts])[inverse] for i in range(3))
    weights = weigh(values, teacher_entropy, entropy)
    return (values * weights).sum() / normalizer, values, entropy, per_side
