r"""The divergences by name: one :class:`Divergence` record each, torch-free (the memory planner reads it).

A record names the module that holds the divergence's math (see :mod:`trl_opd.divergences.fkl` for the two functions
every such module defines), the number of ``(rows, V)`` float32 tiles one chunk of the chunked engine keeps alive
while it computes the value and the closed-form logit gradient (measured with :class:`trl_opd.measurement.
LiveTensorMeter`, tests/test_memory.py), and the formula. Adding a divergence is one module and one entry of
:data:`REGISTRY`.

The one rule that maps a ``(name, beta)`` pair to the computation is :func:`resolve`: TRL's generalized JSD is the
forward KL at β = 0 and the reverse KL at β = 1 (a convention, not the limit: JSD_β → 0 as β → 0).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Divergence:
    """One per-token divergence between the teacher's ``p_T`` and the student's ``p_S``.

    Attributes:
        name: the value of ``divergence=`` that selects it.
        label: its name in words (``"forward KL"``).
        formula: the definition, for messages and docs.
        tiles: float32 ``(rows, V)`` tiles alive at the peak of one chunk (value + closed-form gradient).
        module: the module holding ``dense(log_p_s, log_p_t, beta)`` and ``value_and_gradient(log_p_s, p_s, log_p_t,
            beta)``; imported on first use.
        reverse_kl: how much of it is reverse KL, for a divergence that ignores ``beta`` (1 for RKL, 0 for FKL and
            TVD); a divergence that uses ``beta`` is ``beta`` reverse KL (TRL's generalized JSD: β = 1 is RKL).
        uses_beta: whether ``beta`` changes it.
    """

    name: str
    label: str
    formula: str
    tiles: int
    module: str
    reverse_kl: float = 0.0
    uses_beta: bool = False

    def describe(self, beta: float = 0.5) -> str:
        """In words, for a model card or a log: ``forward KL``, ``generalized JSD(β = 0.5)``."""
        return f"{self.label}(β = {beta:g})" if self.uses_beta else self.label

    def reverse_kl_share(self, beta: float = 0.5) -> float:
        """How much of the objective is reverse KL, in [0, 1]: 1 for RKL, β for JSD(β), 0 for FKL and TVD."""
        return beta if self.uses_beta else self.reverse_kl

    @property
    def math(self) -> ModuleType:
        return importlib.import_module(self.module)

    def dense(self, log_p_s, log_p_t, beta: float = 0.5):
        """The divergence over the last dimension of two log-probability tensors."""
        return self.math.dense(log_p_s, log_p_t, beta)

    def value_and_gradient(self, log_p_s, p_s, log_p_t, beta: float = 0.5):
        """``(values, G)`` of one chunk: ``G = τ · ∂D/∂u_S`` for the student's (transformed) logits, in place."""
        return self.math.value_and_gradient(log_p_s, p_s, log_p_t, beta)


_PACKAGE = __name__.rsplit(".", 1)[0]

REGISTRY: dict[str, Divergence] = {
    d.name: d
    for d in (
        Divergence("fkl", "forward KL", "KL(p_T ‖ p_S) = Σ p_T (log p_T − log p_S)", 4, f"{_PACKAGE}.fkl"),
        Divergence(
            "rkl", "reverse KL", "KL(p_S ‖ p_T) = Σ p_S (log p_S − log p_T)", 3, f"{_PACKAGE}.rkl", reverse_kl=1.0
        ),
        Divergence(
            "jsd",
            "generalized JSD",
            "β KL(p_T ‖ M) + (1 − β) KL(p_S ‖ M), M = β p_T + (1 − β) p_S",
            5,
            f"{_PACKAGE}.jsd",
            uses_beta=True,
        ),
        Divergence("tvd", "total variation", "½ Σ |p_T − p_S|", 3, f"{_PACKAGE}.tvd"),
    )
}

#: The names ``divergence=`` accepts.
DIVERGENCES: tuple[str, ...] = tuple(REGISTRY)


def check_divergence(divergence: str, beta: float = 0.5) -> None:
    """Raise a ``ValueError`` naming the allowed values when ``divergence`` or ``beta`` is invalid."""
    if divergence not in REGISTRY:
        raise ValueError(f"Unknown divergence {divergence!r}; choose one of {', '.join(map(repr, DIVERGENCES))}.")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1] (0 = forward KL, 1 = reverse KL, 0.5 = JSD); got {beta}.")


def resolve(divergence: str, beta: float = 0.5) -> Divergence:
    """The record that computes ``divergence`` at ``beta`` (checked): JSD at β = 0 / 1 is the forward / reverse KL."""
    check_divergence(divergence, beta)
    if divergence == "jsd" and beta in (0.0, 1.0):
        return REGISTRY["fkl" if beta == 0.0 else "rkl"]
    return REGISTRY[divergence]


def reverse_kl_share(divergence: str, beta: float = 0.5) -> float:
    """How much of ``divergence`` at ``beta`` is reverse KL (checked): 1 for ``"rkl"``, β for ``"jsd"``, else 0.

    A top-k + tail teacher distorts the gradient of the reverse-KL part (``trl_opd.trainers.teacher_args``)."""
    check_divergence(divergence, beta)
    return REGISTRY[divergence].reverse_kl_share(beta)


def check_top_k(value, name: str = "teacher_top_k") -> None:
    """The one rule for a top-k setting: a positive integer, or ``None`` for the full vocabulary."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None (the full vocabulary), got {value!r}.")


#: Float32 ``(rows, V)`` tiles one chunk keeps alive on the top-k + tail path, for every divergence: the student's
#: log p_S and p_S (the live teacher's tile is reduced to its k + 1 bins before the student's are projected, and the
#: logit gradient is written in place into log p_S); measured with LiveTensorMeter (tests/test_topk.py).
TOPK_TILES = 2


def loss_tiles(divergence: str, beta: float = 0.5, top_k: int | None = None) -> int:
    """Float32 ``(rows, V)`` tiles one chunk of the chunked loss keeps alive (the memory planner's count)."""
    record = resolve(divergence, beta)
    return record.tiles if top_k is None else TOPK_TILES
