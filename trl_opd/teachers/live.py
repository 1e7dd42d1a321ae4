"""A teacher held in memory beside the student: placement, its head on the shared vocabulary, and scoring."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..divergences import LMHead, chunked_token_log_probs
from ..models import disable_bnb_cpu_weight_repacking
from ..scoring import last_hidden_states
from ..sharding import full_head, gathered_heads, prepare_frozen, unsharded


#: ``run_backbone(prepared, unwrapped, input_ids, attention_mask, logits_to_keep) -> (B, logits_to_keep, H)``: the
#: teacher's hidden states, given its prepared (possibly wrapped) model and the bare one.
BackboneRunner = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


class Teacher:
    """A frozen teacher prepared for a trainer.

    Args:
        model: the teacher as the trainer's accelerator prepared it (possibly wrapped for DeepSpeed/FSDP).
        unwrapped: the bare ``PreTrainedModel``.
        vocab_size: the rows of both heads the divergences compare (:func:`trl_opd.models.shared_vocab_size`).
        run_backbone: how to run the backbone; default: the bare model's backbone, inside
            :func:`trl_opd.sharding.unsharded` (FSDP2's root group held full; ZeRO-3 gathers in its own hooks).
    """

    def __init__(self, model, unwrapped, vocab_size: int, run_backbone: BackboneRunner | None = None):
        self.model, self.unwrapped, self.vocab_size = model, unwrapped, vocab_size
        self._run_backbone = run_backbone or _run_unsharded
        unwrapped.eval()
        disable_bnb_cpu_weight_repacking(unwrapped)

    @classmethod
    def prepare(
        cls, teacher, vocab_size: int, accelerator, *, placement: str = "sharded", run_backbone=None
    ) -> Teacher:
        """Place ``teacher`` with the trainer's ``accelerator`` by ``placement``
        (:func:`trl_opd.sharding.prepare_frozen`: sharded like the student under ZeRO-3 and FSDP2, or a replica);
        ``vocab_size`` is the shared vocabulary (:func:`trl_opd.compatibility.check_compatibility`)."""
        prepared = prepare_frozen(teacher, accelerator, placement)
        return cls(prepared, accelerator.unwrap_model(prepared), vocab_size, run_backbone)

    @property
    def head(self) -> LMHead:
        """The teacher's head, FSDP2 shards gathered here (:func:`trl_opd.sharding.full_head`). It holds the
        parameters themselves (the chunked engine detaches a teacher head when it uses it), so under ZeRO-3 it can be
        taken before and used inside ``trl_opd.sharding.gathered_heads(teacher.unwrapped)``."""
        with torch.no_grad():
            return full_head(self.unwrapped)

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
        with gathered_heads(self.unwrapped):
            log_probs = chunked_token_log_probs(
                hidden, self.head, targets, temperature=temperature, vocab_size=self.vocab_size
            )
        return log_probs, hidden


def _run_unsharded(prepared, unwrapped, input_ids, attention_mask, logits_to_keep):
    with unsharded(unwrapped):
        return last_hidden_states(unwrapped, input_ids, attention_mask, logits_to_keep)
