"""The surface of TRL's experimental ``GKDTrainer``/``GKDConfig`` that :class:`trl_opd.GKDTrainer` keeps for its users.

* :class:`SFTArguments`: the fields ``trl.experimental.gkd.GKDConfig`` inherits from ``SFTConfig``, so a config written
  for TRL constructs unchanged. ``max_length`` is honoured (prompts are left-truncated to it), the dataset-preparation
  fields are accepted with no effect (TRL's GKD skips dataset preparation too), and a value that would change an SFT
  behaviour this trainer does not have (packing, an SFT loss, tokens set on the tokenizer) is refused, naming the fix.
* :func:`generalized_jsd_loss` and :func:`generate_on_policy_outputs`: TRL's static methods, served by TRL's own
  functions (imported on first call), so code calling ``GKDTrainer.generalized_jsd_loss(...)`` gets exactly TRL's
  numbers. The trainer's own loss is the chunked engine (:func:`trl_opd.trainers.distillation_loss.distillation_loss`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field


#: SFT fields a GKD run cannot honour, with their no-op value and why (a different value is refused).
_REFUSED_SFT_FIELDS = {
    "packing": (False, "GKD trains on prompt + completion pairs it builds itself; packing does not apply"),
    "padding_free": (False, "the engine pads prompts on the left and completions on the right"),
    "eval_packing": (None, "GKD trains on prompt + completion pairs it builds itself; packing does not apply"),
    "completion_only_loss": (None, "the divergence is always computed on completion tokens only"),
    "assistant_only_loss": (False, "the divergence is always computed on the completion (the last assistant turn)"),
    "loss_type": ("nll", "the loss is the divergence chosen with `divergence`/`beta`, not an SFT loss"),
    "activation_offloading": (False, "activation offloading is not wired into the distillation engine"),
    "chat_template_path": (None, "set the chat template on the tokenizer you pass as processing_class"),
    "eos_token": (None, "set tokenizer.eos_token on the processing_class (or the model's generation_config)"),
    "pad_token": (None, "set tokenizer.pad_token on the processing_class"),
}


@dataclass
class SFTArguments:
    """The ``SFTConfig`` fields of TRL's experimental ``GKDConfig`` (mixed into [`trl_opd.GKDConfig`]).

    Parameters:
        > Parameters kept from TRL's experimental `GKDConfig` (its `SFTConfig` fields)

        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Longest prompt, in tokens: longer prompts are left-truncated (their end is kept, as TRL's
            `DataCollatorForChatML` keeps the last `max_length` tokens) and counted in `prompts/truncated`. Used as
            `max_prompt_length` when that is not set. Completions are bounded by `max_new_tokens`.
        dataset_text_field, dataset_kwargs, dataset_num_proc, truncation_mode, packing_strategy,
        router_aux_loss_coef:
            Accepted with no effect: TRL's GKD skips SFT's dataset preparation as well.
        packing, padding_free, eval_packing, completion_only_loss, assistant_only_loss, loss_type,
        activation_offloading, chat_template_path, eos_token, pad_token:
            Accepted at their defaults; another value is refused, naming what to do instead.
    """

    max_length: int | None = field(default=1024, metadata={"help": "Longest prompt in tokens (left-truncated)."})
    dataset_text_field: str = field(default="text", metadata={"help": "Accepted; no effect (as in TRL's GKD)."})
    dataset_kwargs: dict | None = field(default=None, metadata={"help": "Accepted; no effect (as in TRL's GKD)."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Accepted; no effect (as in TRL's GKD)."})
    truncation_mode: str = field(default="keep_start", metadata={"help": "Accepted; no effect (as in TRL's GKD)."})
    packing_strategy: str = field(default="bfd", metadata={"help": "Accepted; no effect (as in TRL's GKD)."})
    router_aux_loss_coef: float | None = field(default=None, metadata={"help": "Accepted; no effect."})
    packing: bool = field(default=False, metadata={"help": "Must stay False (no packing in GKD)."})
    padding_free: bool = field(default=False, metadata={"help": "Must stay False."})
    eval_packing: bool | None = field(default=None, metadata={"help": "Must stay None."})
    completion_only_loss: bool | None = field(default=None, metadata={"help": "Must stay None."})
    assistant_only_loss: bool = field(default=False, metadata={"help": "Must stay False."})
    loss_type: str = field(default="nll", metadata={"help": "Must stay 'nll' (the loss is the divergence)."})
    activation_offloading: bool = field(default=False, metadata={"help": "Must stay False."})
    chat_template_path: str | None = field(default=None, metadata={"help": "Must stay None (set it on the tokenizer)."})
    eos_token: str | None = field(default=None, metadata={"help": "Must stay None (set it on the tokenizer)."})
    pad_token: str | None = field(default=None, metadata={"help": "Must stay None (set it on the tokenizer)."})

    def __post_init__(self):
        for name, (allowed, why) in _REFUSED_SFT_FIELDS.items():
            if getattr(self, name) != allowed:
                raise ValueError(
                    f"{type(self).__name__}({name}={getattr(self, name)!r}) is an SFTConfig setting this trainer "
                    f"cannot honour: {why}. Leave {name} at {allowed!r}."
                )
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {self.max_length}.")
        if self.max_length is not None and getattr(self, "max_prompt_length", None) is None:
            self.max_prompt_length = self.max_length
        super().__post_init__()


def _trl_experimental_gkd_trainer():
    """TRL's experimental ``GKDTrainer`` class, imported without its experimental-API warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

    return GKDTrainer


def generalized_jsd_loss(
    student_logits,
    teacher_logits,
    labels=None,
    beta=0.5,
    temperature=1.0,
    reduction="batchmean",
    num_items_in_batch=None,
):
    """TRL's ``GKDTrainer.generalized_jsd_loss`` (Eq. 1 of arXiv:2306.13649, TRL's β convention), called as is:
    ``(B, T, V)`` logits, ``labels`` with -100 where ignored, ``reduction`` in ``batchmean``/``sum``/``mean``/``none``
    (``none`` keeps the per-vocabulary terms), or the sum divided by ``num_items_in_batch``."""
    return _trl_experimental_gkd_trainer().generalized_jsd_loss(
        student_logits,
        teacher_logits,
        labels=labels,
        beta=beta,
        temperature=temperature,
        reduction=reduction,
        num_items_in_batch=num_items_in_batch,
    )


def generate_on_policy_outputs(model, inputs, generation_config):
    """TRL's ``GKDTrainer.generate_on_policy_outputs``: ``model.generate`` on ``inputs["prompts"]`` /
    ``inputs["prompt_attention_mask"]``; returns ``(input_ids, attention_mask, labels)`` with the prompt and everything
    after the first stop token (any of ``generation_config.eos_token_id``) masked (labels -100)."""
    return _trl_experimental_gkd_trainer().generate_on_policy_outputs(model, inputs, generation_config)
