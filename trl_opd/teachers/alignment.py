r"""Aligning a teacher whose input differs from the student's on the student's completion.

The student scores its completion ``y`` after its own prompt ``x``; a teacher may see another prompt ``x'`` (a longer
one holding privileged context, or the same text in another tokenizer's ids). Both sequences end with the same
completion tokens, so the teacher's sequence is built as

    teacher_input = left_pad(x') ++ y,    teacher_mask = left_pad_mask(x') ++ completion_mask

and the last ``L = len(y)`` positions of both sequences predict the same completion tokens: hidden states taken with
``logits_to_keep = L`` line up position by position with the student's, and the student's completion (loss) mask
selects the same tokens on both sides. This module is the one place that builds such a teacher view; everything that
runs a teacher on its own prompt goes through :func:`teacher_view`.
"""

from __future__ import annotations

import torch

from ..scoring import left_padded


#: Keys of a generation batch holding a teacher's own (left-padded) prompt, when it differs from the student's.
TEACHER_PROMPT_IDS = "teacher_prompt_ids"
TEACHER_PROMPT_MASK = "teacher_prompt_mask"


def pad_teacher_prompts(prompt_ids: list[list[int]], pad_token_id: int, device) -> dict[str, torch.Tensor]:
    """``{TEACHER_PROMPT_IDS: (B, P'), TEACHER_PROMPT_MASK: (B, P')}``: the teacher's prompts, left-padded, to be
    carried in a generation batch beside the student's ``prompt_ids`` (TRL splits the batch by its first dimension)."""
    ids, mask = left_padded(prompt_ids, pad_token_id, device)
    return {TEACHER_PROMPT_IDS: ids, TEACHER_PROMPT_MASK: mask}


def teacher_view(inputs, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(input_ids, attention_mask)`` a teacher runs on for the micro-batch ``inputs``.

    Without a teacher prompt in ``inputs`` this is the student's own ``(input_ids, attention_mask)``. With one, it is
    the teacher's prompt followed by the student's completion (``inputs["completion_ids"]`` and
    ``inputs["completion_mask"]``), so that the last ``completion_ids.size(1)`` positions of both sequences predict
    the same tokens (module docstring). Raises when the completion of ``input_ids`` is not ``completion_ids``.
    """
    if TEACHER_PROMPT_IDS not in inputs:
        return input_ids, attention_mask
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    length = completion_ids.size(1)
    if not torch.equal(input_ids[:, input_ids.size(1) - length :], completion_ids):
        raise RuntimeError("The student's sequence does not end with the batch's completion_ids; cannot align.")
    prompt_ids = inputs[TEACHER_PROMPT_IDS].to(completion_ids.device)
    prompt_mask = inputs[TEACHER_PROMPT_MASK].to(completion_mask.device)
    return torch.cat([prompt_ids, completion_ids], dim=1), torch.cat([prompt_mask, completion_mask], dim=1)
