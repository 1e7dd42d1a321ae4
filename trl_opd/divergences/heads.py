"""The ``lm_head`` of a model as one record: weight, bias and the transform some models apply to its logits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LMHead:
    """``u = softcap · tanh(scale · (h Wᵀ + b) / softcap)`` (or ``scale · (h Wᵀ + b)`` without a softcap).

    Build it from a model with :meth:`of`; the chunked divergences take one for the student and one for the teacher.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, model) -> LMHead:
        """The head of a ``PreTrainedModel`` (or ``PeftModel``): its output embedding and :func:`head_transform`."""
        head = model.get_output_embeddings()
        scale, softcap = head_transform(model.config)
        return cls(head.weight, head.bias, scale, softcap)

    @property
    def transform(self) -> tuple[float, float | None]:
        return self.scale, self.softcap

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    def detached(self) -> LMHead:
        """The same head with no gradient flowing to it (the teacher's)."""
        return LMHead(self.weight.detach(), None if self.bias is None else self.bias.detach(), self.scale, self.softcap)


def head_transform(config) -> tuple[float, float | None]:
    """``(logit_scale, final_logit_softcapping)`` a model applies after its ``lm_head`` (1.0 / None for most).

    Mirrors TRL's ``DistillationTrainer``: Cohere ``logit_scale``, Muse ``output_multiplier``, Falcon-H1
    ``lm_head_multiplier``, Granite/MiniCPM3 ``1 / logits_scaling`` (HyperCLOVA X multiplies), Gemma softcapping.
    """
    config = config.get_text_config()
    scale = getattr(config, "logit_scale", None)
    for name in ("output_multiplier", "lm_head_multiplier"):
        if scale is None:
            scale = getattr(config, name, None)
    if scale is None and getattr(config, "logits_scaling", None) is not None:
        scale = config.logits_scaling if config.model_type == "hyperclovax" else 1 / config.logits_scaling
    return (1.0 if scale is None else float(scale)), getattr(config, "final_logit_softcapping", None)


def make_logit_transform(
    logit_scale: float = 1.0, softcap: float | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z ↦ softcap · tanh(scale · z / softcap)`` (or ``scale · z`` without softcap): Gemma/Cohere-style heads."""

    def transform(z: torch.Tensor) -> torch.Tensor:
        if logit_scale != 1.0:
            z = z * logit_scale
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        return z

    return transform


def transformed_logits(h: torch.Tensor, head: LMHead, vocab_size: int) -> tuple[torch.Tensor, float | torch.Tensor]:
    """``u`` of ``z = h W[:V]ᵀ + b[:V]`` as a fresh float32 tile, and ``∂u/∂z`` (a float, or a tile with a softcap)."""
    w = head.weight[:vocab_size]
    z = h.to(w.dtype) @ w.t()
    z = z.float() if z.dtype != torch.float32 else z
    if head.bias is not None:
        z.add_(head.bias[:vocab_size])
    if head.scale != 1.0:
        z.mul_(head.scale)
    if head.softcap is None:
        return z, head.scale
    z.div_(head.softcap).tanh_()
    derivative = (1.0 - z.square()).mul_(head.scale)
    return z.mul_(head.softcap), derivative
