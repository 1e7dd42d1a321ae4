r"""Per-token divergences between a teacher and a student next-token distribution.

Notation: at one token position the student's distribution is ``p_S = softmax(u_S / τ)`` and the teacher's is
``p_T = softmax(u_T / τ)`` over the same vocabulary (u the logits after the head's transform, τ the temperature);
values are in nats.

* Forward KL  (``"fkl"``):  ``KL(p_T ‖ p_S) = Σ_v p_T(v) · (log p_T(v) − log p_S(v))``   (mode covering)
* Reverse KL  (``"rkl"``):  ``KL(p_S ‖ p_T) = Σ_v p_S(v) · (log p_S(v) − log p_T(v))``   (mode seeking)
* Generalized JSD(β) (``"jsd"``), TRL's convention: ``M = β p_T + (1 − β) p_S``,
  ``JSD_β = β KL(p_T ‖ M) + (1 − β) KL(p_S ‖ M)``; β = 0 is the forward KL, β = 1 the reverse KL.
* Total variation (``"tvd"``): ``TV = ½ Σ_v |p_T(v) − p_S(v)|``, in [0, 1].

Layout, one concept per module:

* :mod:`.registry` (torch-free): one :class:`Divergence` record per name (its formula, module, tile count and
  reverse-KL share), :func:`resolve`, the JSD endpoint rule, and :func:`check_top_k`, the rule for a top-k setting;
* :mod:`.fkl`, :mod:`.rkl`, :mod:`.jsd`, :mod:`.tvd`: each divergence's dense formula and closed-form logit gradient;
* :mod:`.dense`: :func:`per_token_divergence` on ``(..., V)`` logits (autograd);
* :mod:`.heads`: :class:`LMHead`, a model's head as one record (weight, bias, scale, softcap);
* :mod:`.engine`: :func:`chunked_per_token_divergence` and :func:`chunked_divergence_loss` from hidden states, never
  building the ``(N, V)`` logits, and :func:`chunked_token_log_probs`.

Importing this package loads no torch until one of the torch-based names is used.
"""

from __future__ import annotations

import importlib

from .registry import (  # noqa: F401
    DIVERGENCES,
    REGISTRY,
    Divergence,
    check_divergence,
    check_top_k,
    loss_tiles,
    resolve,
    reverse_kl_share,
)


_LAZY = {
    **dict.fromkeys(
        (
            "divergence_from_log_probs",
            "entropy_from_logits",
            "forward_kl",
            "generalized_jsd",
            "per_token_divergence",
            "reverse_kl",
            "total_variation",
        ),
        ".dense",
    ),
    **dict.fromkeys(("LMHead", "head_transform", "make_logit_transform"), ".heads"),
    **dict.fromkeys(("chunked_divergence_loss", "chunked_per_token_divergence", "chunked_token_log_probs"), ".engine"),
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(
    [
        "DIVERGENCES",
        "REGISTRY",
        "Divergence",
        "check_divergence",
        "check_top_k",
        "loss_tiles",
        "resolve",
        "reverse_kl_share",
        *_LAZY,
    ]
)
