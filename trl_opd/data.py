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


def prompt_token_ids(tokenizer, prompt, chat_template_kwargs: dict | None = None) -> list[int]:
    """Token ids of a prompt exactly as TRL's trainers tokenize it for generation: the chat template with its
    generation prompt for messages, ``tokenizer(text)`` (special tokens included) for text."""
    if isinstance(prompt, list):
        rendered = tokenizer.apply_chat_template(
            conversation=[prompt],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            **(chat_template_kwargs or {}),
        )
        return list(rendered["input_ids"][0])
    return list(tokenizer(text=[prompt])["input_ids"][0])


def completion_token_ids(
    tokenizer, prompt, completion, *, eos_token_ids, chat_template_kwargs: dict | None = None
) -> list[int]:
    """Token ids of a dataset completion, as the model would generate them after the rendered prompt.

    Text: ``tokenizer(completion) + [eos]``. Messages: the chat template rendered over prompt + completion, minus the
    rendered prompt (with its generation prompt), cut after the first end-of-sequence token.
    """
    if isinstance(prompt, list):  # conversational
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        kwargs = {"tokenize": False, **(chat_template_kwargs or {})}
        prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, **kwargs)
        full_text = tokenizer.apply_chat_template(prompt + completion, **kwargs)
        if not full_text.startswith(prompt_text):
            raise ValueError(
                "The chat template renders the prompt differently inside the full conversation, so the "
                "completion can't be located. Pass text prompts/completions or a prefix-preserving template."
            )
        ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
        return cut_after_first_eos(ids, eos_token_ids)
    if not isinstance(completion, str):
        raise ValueError("A text prompt needs a text completion; got a list of messages.")
    return tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def split_messages(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """``messages`` -> (prompt, completion): the completion is the last assistant message."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return messages[:i], [messages[i]]
    roles = [m.get("role") for m in messages]
    raise ValueError(f"A `messages` row has no assistant message to distil (roles: {roles}).")


def prepare_prompt_completion_dataset(
    dataset: Dataset | IterableDataset | dict | None,
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
    if isinstance(dataset, dict):  # several evaluation datasets
        return {
            key: prepare_prompt_completion_dataset(ds, f"{name}[{key!r}]", needs_completion, completion_hint)
            for key, ds in dataset.items()
        }
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise ValueError(f"{name} has no rows; pass a dataset with at least one prompt.")
    columns = dataset_columns(dataset, name)
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
    if isinstance(dataset, Dataset):
        check_row_types(dataset[0], name, row_index=0)
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


def dataset_columns(dataset: Dataset | IterableDataset, name: str = "train_dataset") -> list[str]:
    """The column names; a stream whose features are not declared is read for its first row."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    try:
        first = next(iter(dataset))
    except StopIteration:
        raise ValueError(f"{name} is a stream with no rows; pass a dataset with at least one prompt.") from None
    return list(first)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def check_row_types(row: dict, name: str = "train_dataset", row_index: int | None = None) -> None:
    """A ``prompt`` must be text or a list of messages, a ``completion`` the same kind (or missing/None).

    Raises:
        TypeError: naming the column, the row, the type found and the layouts expected.
    """
    where = f"{name}" + (f" row {row_index}" if row_index is not None else "")
    prompt = row.get("prompt")
    if not (isinstance(prompt, str) or _is_messages(prompt)):
        raise TypeError(
            f"{where}: `prompt` is {type(prompt).__name__} ({str(prompt)[:60]!r}); expected text or a list of "
            '{"role": ..., "content": ...} messages.'
        )
    if "completion" not in row or row["completion"] is None:
        return
    completion = row["completion"]
    if isinstance(prompt, str) and not isinstance(completion, str):
        raise TypeError(
            f"{where}: the prompt is text, so `completion` must be text too; got {type(completion).__name__} "
            f"({str(completion)[:60]!r}). Convert it: dataset.map(lambda r: {{'completion': str(r['completion'])}})."
        )
    if isinstance(prompt, list) and not (isinstance(completion, str) or _is_messages(completion)):
        raise TypeError(
            f"{where}: the prompt is a list of messages, so `completion` must be an assistant message list (or text); "
            f"got {type(completion).__name__} ({str(completion)[:60]!r})."
        )


class MissingSplitError(ValueError):
    """The dataset exists but has no such split (a run may go on without its held-out split)."""


#: reasoning-gym splits: the train split is drawn with ``seed``, the test split with ``seed + 1``.
REASONING_GYM_SPLITS = {"train": 0, "test": 1}


def load_dataset_spec(
    spec: str, split: str | None = None, size: int | None = None, seed: int = 0, config: dict | None = None
):
    """A dataset named the way the command line names it.

    * a folder written by ``datasets.save_to_disk`` (a ``DatasetDict`` folder takes ``split``, default ``"train"``);
    * a ``.json`` / ``.jsonl`` / ``.parquet`` file (or several, comma-separated), loaded with ``datasets``: its rows are
      the ``"train"`` split;
    * ``reasoning_gym:<task>``: ``size`` items (default 64) of a reasoning-gym task
      (``trl_opd.assets.reasoning_gym_dataset`` with the task settings ``config``), offline; the ``"train"`` split is
      drawn with ``seed`` and the ``"test"`` split with ``seed + 1``.

    ``size`` keeps the first ``size`` rows of a folder or file (all by default).

    Raises:
        MissingSplitError: the dataset has no split ``split`` (naming the splits it has).
        ValueError: naming the accepted forms when ``spec`` is none of them.
    """
    import os

    from datasets import DatasetDict, load_dataset, load_from_disk

    if spec.startswith("reasoning_gym:"):
        from .assets import reasoning_gym_dataset

        split = split or "train"
        if split not in REASONING_GYM_SPLITS:
            raise MissingSplitError(f"{spec} has the splits {list(REASONING_GYM_SPLITS)}; there is no split {split!r}.")
        task = spec.split(":", 1)[1]
        return reasoning_gym_dataset(task, size=size or 64, seed=seed + REASONING_GYM_SPLITS[split], config=config)
    if os.path.isdir(spec):
        loaded = load_from_disk(spec)
        if isinstance(loaded, DatasetDict):
            split = split or "train"
            if split not in loaded:
                raise MissingSplitError(f"{spec} holds the splits {sorted(loaded)}; there is no split {split!r}.")
            loaded = loaded[split]
        elif split not in (None, "train"):
            raise MissingSplitError(f"{spec} holds one dataset (the train split); there is no split {split!r}.")
        return _first_rows(loaded, size)
    files = spec.split(",")
    kinds = {"json": "json", "jsonl": "json", "parquet": "parquet"}
    extensions = {f.rsplit(".", 1)[-1].lower() for f in files}
    missing = [f for f in files if not os.path.isfile(f)]
    if len(extensions) == 1 and extensions <= set(kinds) and not missing:
        if split not in (None, "train"):
            raise MissingSplitError(f"{spec}: a file holds one split (train); there is no split {split!r}.")
        return _first_rows(load_dataset(kinds[extensions.pop()], data_files=files, split="train"), size)
    raise ValueError(
        f"Cannot read the dataset {spec!r}"
        + (f" (no such file: {', '.join(missing)})" if missing and extensions <= set(kinds) else "")
        + ": pass a folder saved with datasets.save_to_disk, a .json/.jsonl/.parquet file, or reasoning_gym:<task>."
    )


def _first_rows(dataset, size: int | None):
    return dataset if size is None or size >= len(dataset) else dataset.select(range(size))
