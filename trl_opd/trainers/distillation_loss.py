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
    fused = weigh is None
    call = chunked_divergence_loss if fused else chunked_per_token_divergence
    extra = {"normalizer": normalizer} if fused else {"return_entropy": True, "return_teacher_entropy": True}
    outputs, rows_of, per_side = [], [], {}
    for side in sides:
        rows = slice(None) if _covers_in_order(side, n) else side.positions
        k = top_k if side.targets is None else None  # precomputed targets are top-k already
        out = call(
            h_s[rows],
            side.teacher,
            student_head,
            side.head,
            divergence,
            beta,
            temperature,
            vocab_size=vocab_size,
            teacher_top_k=k,
            **extra,
        )
        values = out[1] if fused else out[0]
        per_side[side.label] = (float(values.detach().sum()), values.numel())
        outputs.append(out)
        rows_of.append(rows)
    if fused:  # (loss, values, entropy) per side: the losses add up, the per-token values go back in place
        loss = sum(out[0] for out in outputs)
        values, entropy = torch.zeros(n, device=h_s.device), torch.zeros(n, device=h_s.device)
        for (_, part_values, part_entropy), rows in zip(outputs, rows_of, strict=True):
            values[rows], entropy[rows] = part_values, part_entropy
        return loss, values, entropy, per_side
    if len(outputs) == 1 and isinstance(rows_of[0], slice):
        values, entropy, teacher_entropy = outputs[0]
    else:  # differentiable gather back into token order
        inverse = torch.argsort(torch.cat([side.positions for side in sides]))
        values, entropy, teacher_entropy = (torch.cat([out[i] for out in outputs])[inverse] for i in range(3))
    weights = weigh(values, teacher_entropy, entropy)
    return (values * weights).sum() / normalizer, values, entropy, per_side
