"""A teacher held in memory beside the student: placement, its head on the shared vocabulary, and scoring."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..divergences import LMHead, chunked_token_log_probs
from ..models import disable_bnb_cpu_weight_repacking
from ..scoring import last_hidden_states


#: ``run_backbone(prepared, unwrapped, input_ids, attention_mask, logits_to_keep) -> (B, logits_to_keep, H)``: the
#: teacher's hidden states, given its prepared (possibly wrapped) model and the bare one.
BackboneRunner = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


class Teacher:
    """A frozen teacher prepared for a trainer.

    Args:
        model: the teacher as the trainer's accelerator prepared it (possibly wrapped for DeepSpeed/FSDP).
        unwrapped: the bare ``PreTrainedModel``.
        vocab_size: the rows of both heads the divergences compare (:func:`trl_opd.models.shared_vocab_size`).
        run_backbone: how to run the backbone (a trainer routes it through its DeepSpeed/FSDP wrapper); default: the
            bare model's backbone.
    """

    def __init__(self, model, unwrapped, vocab_size: int, run_backbone: BackboneRunner | None = None):
        self.model, self.unwrapped, self.vocab_size = model, unwrapped, vocab_size
        self._run_backbone = run_backbone or (lambda _, m, ids, mask, k: last_hidden_states(m, ids, mask, k))
        unwrapped.eval()
        disable_bnb_cpu_weight_repacking(unwrapped)

    @classmethod
    def prepare(cls, teacher, vocab_size: int, accelerator, *, deepspeed: bool = False, run_backbone=None) -> Teacher:
        """Place ``teacher`` with the trainer's ``accelerator`` (DeepSpeed's inference engine when ``deepspeed``);
        ``vocab_size`` is the shared vocabulary (:func:`trl_opd.compatibility.check_compatibility`)."""
        if deepspeed:
            from trl.models import prepare_deepspeed

            prepared = prepare_deepspeed(teacher, accelerator)
        else:
            prepared = accelerator.prepare_model(teacher, evaluation_mode=True)
        return cls(prepared, accelerator.unwrap_model(prepared), vocab_size, run_backbone)

    @property
    def head(self) -> LMHead:
        """The teacher's head (no gradient)."""
        return LMHead.of(self.unwrapped).detached()

    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
        """``(B, logits_to_keep, H_T)`` hidden states predicting the last ``logits_to_keep`` tokens."""
        self.model.eval()
        return self._run_backbone(self.model, self.unwrapped, input_ids, attention_mask, logits_to_keep)

    @torch.no_grad()
    def token_log_probs(
        self, input_ids, attention_mask, logits_to_keep: int, mask: torch.Tensor, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p_T(y_t), hidden)`` of the masked completion tokens: ``(N,)`` log-probs at ``temperature`` and the
        ``(N, H_T)`` hidden states behind them."""
        hidden = self.hidden_states(input_ids, attention_mask, logits_to_keep)[mask]
        targets = input_ids[:, -logits_to_keep:][mask]
        log_probs = chunked_token_log_probs(
            hidden, self.head, targets, temperature=temperature, vocab_size=self.vocab_size
        )
        return log_probs, hidden
