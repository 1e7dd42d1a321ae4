"""What the student is prompted with: the prompt-length cap, and the sampling temperature checked at config time.

A prompt longer than the model's context (``max_position_embeddings``) either crashes inside the model (learned
position embeddings, GPT-2: an ``IndexError``) or trains silently outside the positions the model was trained on
(RoPE). :class:`PromptLengthMixin` checks every tokenized prompt: with ``max_prompt_length`` set, longer prompts are
left-truncated (their end, next to the completion, is kept) and counted (``prompts/truncated``); without it, a prompt
that leaves no room for ``max_completion_length`` tokens in the model's context is refused, naming the fix.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field


logger = logging.getLogger(__name__)


@dataclass
class PromptArguments:
    """Mixed into a trainer's config before the TRL config.

    Parameters:
        > Parameters that control the prompts

        max_prompt_length (`int`, *optional*):
            Left-truncate prompts to this many tokens (counted in the logged `prompts/truncated`). By default prompts
            are kept whole, and one that leaves fewer than `max_completion_length` positions of the model's context
            is refused.
    """

    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Left-truncate prompts to this many tokens (counted; default: keep whole)."}
    )

    def __post_init__(self):
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1 or None, got {self.max_prompt_length}.")
        temperature = getattr(self, "temperature", 1.0)
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(
                f"temperature must be a finite number > 0, got {temperature}: it divides the logits of the sampling "
                "and of the loss (use 1.0 to sample from the model's own distribution)."
            )
        super().__post_init__()


class PromptLengthMixin:
    """Applies :class:`PromptArguments` to the prompts a TRL trainer tokenizes (``_tokenize_prompts``)."""

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        return self._fit_prompts([list(ids) for ids in prompt_ids]), images, multimodal_fields

    def _context_length(self) -> int | None:
        config = self.accelerator.unwrap_model(self.model).config.get_text_config()
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def _fit_prompts(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        cap = getattr(self.args, "max_prompt_length", None)
        context = self._context_length()
        completion = self.max_completion_length or 0
        if cap is None:
            longest = max(map(len, prompt_ids), default=0)
            if context is not None and longest + completion > context:
                raise ValueError(
                    f"A prompt of {longest} tokens plus max_completion_length={completion} exceeds the model's context "
                    f"of {context} positions. Set max_prompt_length (e.g. {max(context - completion, 1)}) to "
                    "left-truncate long prompts, or lower max_completion_length."
                )
            return prompt_ids
        if context is not None:
            cap = min(cap, max(context - completion, 1))
        truncated = sum(len(ids) > cap for ids in prompt_ids)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["prompts/truncated"].append(float(truncated))
        if truncated:
            logger.info(
                "Left-truncated %d of %d prompts to %d tokens (max_prompt_length).", truncated, len(prompt_ids), cap
            )
        return [ids[-cap:] if len(ids) > cap else ids for ids in prompt_ids]
