"""Dataset checks and normalisation shared by the trainers.

Accepted layouts (text or chat messages, like TRL's dataset formats):

* ``prompt`` + ``completion``: the prompt, and a reference completion for off-policy rows;
* ``messages``: a conversation; the last assistant message becomes the completion, everything before it the prompt;
* ``prompt`` alone: only when no row ever needs a reference completion (pure on-policy training).
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset, IterableDataset


logger = logging.getLogger(__name__)


def is_empty_completion(completion: Any) -> bool:
    """True for a missing, blank, or all-blank-messages completion."""
    if completion is None:
        return True
    if isinstance(completion, str):
        return not completion.strip()
    # conversational: a list of messages; empty when no message has non-blank content
    return not any(str(message.get("content") or "").strip() for message in completion)


def cut_after_first_eos(ids: list[int], eos_token_ids) -> list[int]:
    """``ids`` up to and including the first end-of-sequence token (all of ``ids`` when there is none)."""
    for i, token in enumerate(ids):
        if token in eos_token_ids:
            return ids[: i + 1]
    return ids


def split_messages(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """``messages`` -> (prompt, completion): the completion is the last assistant message."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return messages[:i], [messages[i]]
    roles = [m.get("role") for m in messages]
    raise ValueError(f"A `messages` row has no assistant message to distil (roles: {roles}).")


def prepare_prompt_completion_dataset(
    dataset: Dataset | IterableDataset | None,
    name: str = "train_dataset",
    needs_completion: bool = True,
    completion_hint: str = "",
) -> Dataset | IterableDataset | None:
    """Check the columns, convert ``messages`` to ``prompt``/``completion`` and drop rows with empty completions.

    ``completion_hint``: the caller's advice, appended to the error when a `completion` column is needed and missing
    (each trainer knows why it needs one and how to do without).

    Raises:
        ValueError: naming the columns found and the layouts expected, when the columns don't fit.
    """
    if dataset is None:
        return None
    columns = list(dataset.column_names or [])
    if "prompt" not in columns and "messages" in columns:
        dataset = dataset.map(
            lambda row: dict(zip(("prompt", "completion"), split_messages(row["messages"]), strict=True)),
            remove_columns=["messages"],
        )
        columns = [c for c in columns if c != "messages"] + ["prompt", "completion"]
    if "prompt" not in columns or (needs_completion and "completion" not in columns):
        needed = "`prompt` and `completion`, or `messages`" if needs_completion else "`prompt` (or `messages`)"
        hint = f" {completion_hint}" if completion_hint and needs_completion and "prompt" in columns else ""
        raise ValueError(f"{name} has columns {columns}; expected {needed}.{hint}")
    if needs_completion and isinstance(dataset, Dataset):
        empty = [i for i, completion in enumerate(dataset["completion"]) if is_empty_completion(completion)]
        if len(empty) == len(dataset):
            raise ValueError(f"Every row of {name} has an empty completion; off-policy rows would train on no tokens.")
        if empty:
            logger.warning(
                "%s: dropped %d of %d rows whose completion is empty (they would train on zero tokens off-policy).",
                name,
                len(empty),
                len(dataset),
            )
            keep = sorted(set(range(len(dataset))) - set(empty))
            dataset = dataset.select(keep)
    return dataset
