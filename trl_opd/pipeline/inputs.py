"""What one run reads before its trainer is built: the train and test splits, the hooks, the verifiers.

Shared by :mod:`.run` (training) and :mod:`.measure` (the held-out scores), which both resolve verifiers by name.
"""

from __future__ import annotations

import importlib
import logging

from .arguments import unknown_key_message


logger = logging.getLogger(__name__)

#: Default number of reasoning-gym items per split when ``dataset_train_size`` / ``dataset_test_size`` are unset.
REASONING_GYM_SIZES = {"train": 64, "test": 16}


def load_splits(script) -> tuple:
    """``(train, test)`` datasets; ``test`` is ``None`` (with a warning) when the dataset has no such split."""
    from ..data import MissingSplitError, load_dataset_spec

    if not script.dataset_name:
        raise ValueError("dataset_name is required: a save_to_disk folder, a .json/.jsonl/.parquet file, or "
                         "reasoning_gym:<task>.")  # fmt: skip
    rg = script.dataset_name.startswith("reasoning_gym:")

    def load(split, size, role):
        size = size if size is not None or not rg else REASONING_GYM_SIZES[role]
        return load_dataset_spec(script.dataset_name, split=split, size=size, config=script.dataset_config)

    hint = getattr(script, "privileged_context_format", None)
    train = load(script.dataset_train_split, script.dataset_train_size, "train")
    if hint:
        train = with_privileged_context(train, hint)
    try:
        test = load(script.dataset_test_split, script.dataset_test_size, "test")
        if hint:  # the evaluation's teacher sees the hint too
            test = with_privileged_context(test, hint)
    except MissingSplitError as error:
        logger.warning("%s: the held-out guards and scores are not measured.", error)
        return train, None
    return without_held_out_prompts(train, test), test


def with_privileged_context(dataset, template: str):
    """``dataset`` with a ``privileged_context`` column formatted from each row's columns (messages as their text)."""
    from ..teachers.privileged import PRIVILEGED_COLUMN, context_text

    def build(row):
        values = {key: context_text(value) if isinstance(value, list) else value for key, value in row.items()}
        try:
            return {PRIVILEGED_COLUMN: template.format(**values)}
        except (KeyError, IndexError) as error:
            raise ValueError(
                f"privileged_context_format {template!r} names {error}, which is no column of the dataset "
                f"({', '.join(dataset.column_names)}); use {{column}} placeholders of those."
            ) from None

    return dataset.map(build)


def without_held_out_prompts(train, test):
    """``train`` without the rows whose prompt is also a held-out prompt (a small task repeats problems); the count
    dropped is logged. Raises when every row would go."""
    import json

    column = "prompt" if "prompt" in train.column_names and "prompt" in test.column_names else None
    if column is None:
        return train
    held_out = {json.dumps(p, sort_keys=True) for p in test[column]}
    keep = [i for i, p in enumerate(train[column]) if json.dumps(p, sort_keys=True) not in held_out]
    if not keep:
        raise ValueError("every training prompt is also in the held-out split; use a larger or a different dataset.")
    if len(keep) < len(train):
        logger.warning("dropped %d of %d training rows whose prompt is held out.", len(train) - len(keep), len(train))
        train = train.select(keep)
    return train


def build_hooks(script) -> dict:
    """The hooks' objects from their settings (``{}`` = defaults; unknown keys refused naming the valid ones)."""
    from dataclasses import fields

    from ..hooks import FlawedPrefixFilter, PacedCurriculum, TokenImportance

    hooks = {}
    for name, cls in (
        ("token_importance", TokenImportance),
        ("prefix_filter", FlawedPrefixFilter),
        ("curriculum", PacedCurriculum),
    ):
        settings = getattr(script, name)
        if settings is None:
            continue
        settings = dict(settings)
        if name == "token_importance" and "top_fraction" in settings:  # the short form {top_fraction: ρ}
            settings.setdefault("mode", "top_fraction")
            settings["keep_fraction"] = settings.pop("top_fraction")
        valid = [f.name for f in fields(cls) if f.init]
        for key in settings:
            if key not in valid:
                raise ValueError(unknown_key_message(key, valid, name) + f" ({cls.__name__} takes {', '.join(valid)})")
        hooks[name] = cls(**settings)
    return hooks


def resolve_verifier(name: str, script, split: str):
    """A verifier named ``pkg.module:function`` or ``reasoning_gym:<task>``, scoring rows of ``split``.

    A ``reasoning_gym:<task>`` verifier on a ``reasoning_gym:<task>`` dataset of the same task scores each completion on
    its own item (``entry_index`` of the split's items); on any other dataset it compares with the ``answer`` column.
    """
    if name.startswith("reasoning_gym:"):
        from ..assets import make_reasoning_gym_reward
        from ..data import REASONING_GYM_SPLITS

        task = name.split(":", 1)[1]
        if script.dataset_name == name:
            size = getattr(script, f"dataset_{split}_size")
            size = size if size is not None else REASONING_GYM_SIZES[split]
            split_name = getattr(script, f"dataset_{split}_split")
            seed = REASONING_GYM_SPLITS.get(split_name, 0)
            return make_reasoning_gym_reward(task, size=size, seed=seed, config=script.dataset_config)
        scorer = make_reasoning_gym_reward(task, size=1, seed=0, config=script.dataset_config)

        def by_answer(prompts=None, completions=None, answer=None, **kwargs):
            if answer is None:
                raise ValueError(f"the verifier {name} on {script.dataset_name} needs an `answer` column.")
            return scorer(completions=completions, answer=answer)

        by_answer.__name__ = scorer.__name__
        return by_answer
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"reward_funcs entry {name!r}: write pkg.module:function or reasoning_gym:<task>.")
    try:
        function = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"reward_funcs entry {name!r} cannot be imported ({error}); check the module path.") from None
    if not callable(function):
        raise ValueError(f"reward_funcs entry {name!r} is not callable.")
    return function
