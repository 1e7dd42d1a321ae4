"""What a user hands to :class:`~trl_opd.trainers.spin.SPINTrainer`, checked with errors that name the fix."""

from __future__ import annotations

import logging

from accelerate.utils import is_peft_model
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ...models import disable_bnb_cpu_weight_repacking, load_model


logger = logging.getLogger(__name__)

#: Why SPIN needs dataset completions, and how to do without (appended to the dataset error).
DATASET_HINT = (
    'SPIN\'s "chosen" side is the dataset completion (the model\'s own samples are "rejected"): add a `completion` '
    "column (text or an assistant message), or give `messages` ending with the assistant's answer, or pass "
    "chosen_model= to have a model write the chosen completions from `prompt` alone."
)


def load_policy(model: str | PreTrainedModel, args, peft_config=None, quantization_config=None):
    """The model SPIN trains: loaded from a path like ``DPOTrainer`` would (:func:`trl_opd.models.load_model`), then
    wrapped once with ``peft_config``'s adapter, which trains through every round.

    Raises:
        ValueError: a ``PeftModel`` together with a ``peft_config``, or a quantized model without adapters.
    """
    model = load_model(model, args.model_init_kwargs, args, quantization_config=quantization_config)
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if peft_config is not None:
        if is_peft_model(model):
            raise ValueError(
                "You passed a PeftModel and a peft_config: pass the base model with peft_config, or the PeftModel "
                "alone (its adapter then trains)."
            )
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    if quantized and not is_peft_model(model):
        raise ValueError("A quantized model only trains through adapters: pass peft_config (QLoRA).")
    disable_bnb_cpu_weight_repacking(model)
    return model


def load_tokenizer(model_path: str | None, processing_class) -> PreTrainedTokenizerBase:
    """``processing_class``, or the tokenizer saved beside the model at ``model_path``; its pad token defaults to EOS.

    Raises:
        ValueError: no tokenizer was given for a model instance, or none can be loaded from ``model_path``.
        TypeError: ``processing_class`` is not a text tokenizer.
    """
    if processing_class is None:
        if model_path is None:
            raise ValueError(
                "The model is given as an instance, so SPINTrainer cannot find its tokenizer: pass "
                "processing_class=AutoTokenizer.from_pretrained(<the model's folder>)."
            )
        try:
            processing_class = AutoTokenizer.from_pretrained(model_path)
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"No tokenizer could be loaded from {model_path} ({first_line}). Save the tokenizer beside the model "
                "(tokenizer.save_pretrained(folder)) or pass processing_class=AutoTokenizer.from_pretrained(<folder "
                "of the tokenizer>)."
            ) from error
    if not isinstance(processing_class, PreTrainedTokenizerBase):
        raise TypeError(
            "SPINTrainer supports text models: processing_class must be a tokenizer, got "
            f"{type(processing_class).__name__}."
        )
    if processing_class.pad_token is None:
        processing_class.pad_token = processing_class.eos_token
    return processing_class


def model_max_positions(model) -> int | None:
    """The largest sequence the model's position embeddings cover (``None`` when its config does not say)."""
    config = model.config.get_text_config()
    return getattr(config, "max_position_embeddings", None)


def prompts_within_limits(prompt_ids: list[list[int]], args, max_positions: int | None) -> list[int]:
    """The indices of the prompts to keep: those of at most ``args.max_prompt_length`` tokens (the others are dropped
    with a logged count).

    Raises:
        ValueError: a kept prompt is too long for the model (its tokens plus ``max_completion_length`` exceed
            ``max_positions``: sampling would run past the position embeddings) or for DPO (``args.max_length`` tokens
            or more leave no completion token, and DPO drops such pairs silently); or every prompt was dropped. The
            message names ``max_prompt_length`` as the fix.
    """
    lengths = [len(ids) for ids in prompt_ids]
    keep = list(range(len(lengths)))
    limit = args.max_prompt_length
    if limit is not None:
        keep = [i for i in keep if lengths[i] <= limit]
        dropped = len(lengths) - len(keep)
        if not keep:
            raise ValueError(
                f"Every prompt of train_dataset is longer than max_prompt_length={limit} tokens (the shortest has "
                f"{min(lengths)}): raise max_prompt_length."
            )
        if dropped:
            logger.warning(
                "train_dataset: dropped %d of %d prompts longer than max_prompt_length=%d tokens (the longest had %d).",
                dropped,
                len(lengths),
                limit,
                max(lengths),
            )
    budgets = []
    if max_positions is not None:
        reason = f"the model's {max_positions} positions minus max_completion_length={args.max_completion_length}"
        budgets.append((max_positions - args.max_completion_length, reason))
    if args.max_length is not None:
        budgets.append((args.max_length - 1, f"DPO's max_length={args.max_length} minus one completion token"))
    for budget, reason in budgets:
        too_long = [i for i in keep if lengths[i] > budget]
        if too_long:
            longest = max(lengths[i] for i in too_long)
            raise ValueError(
                f"{len(too_long)} prompt(s) of train_dataset are too long: the longest has {longest} tokens, more than "
                f"{max(budget, 0)} ({reason}). Set max_prompt_length={max(budget, 1)} to drop them (the count is "
                "logged), shorten the prompts, or lower max_completion_length / raise max_length."
            )
    return keep
