"""One ``trl-opd gkd|minillm|spin`` run: data, hooks and verifiers from the keys, the trainer, train, measure, save.

:func:`run_training` is what the command line and every pipeline stage call. It

1. loads the train and test splits (:func:`trl_opd.data.load_dataset_spec`), the hooks and the verifiers;
2. builds the trainer like TRL's own scripts (model path + ``get_quantization_config`` / ``get_peft_config``), or on a
   given model (a pipeline stage continuing the previous stage's adapter);
3. trains (from ``resume_from_checkpoint``: a path, or ``True`` for the last ``checkpoint-N`` of ``output_dir``);
4. measures the held-out guards and task scores (:mod:`trl_opd.pipeline.measure`);
5. saves the model (or adapter) and the tokenizer into ``output_dir`` with a model card (:mod:`.card`).
"""

from __future__ import annotations

import importlib
import logging
import os
import time

from .arguments import HOOKS_BY_TRAINER, RunArguments


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

    train = load(script.dataset_train_split, script.dataset_train_size, "train")
    try:
        test = load(script.dataset_test_split, script.dataset_test_size, "test")
    except MissingSplitError as error:
        logger.warning("%s: the held-out guards and scores are not measured.", error)
        return train, None
    return without_held_out_prompts(train, test), test


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
    from .arguments import unknown_key_message

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


def resolve_model_paths(run: RunArguments) -> None:
    """Packaged model names (``smollm2:student``, :data:`trl_opd.assets.ASSET_MODELS`) become their folders."""
    from ..assets import ASSET_MODELS, asset_model_dir

    if run.model.model_name_or_path in ASSET_MODELS:
        run.model.model_name_or_path = str(asset_model_dir(run.model.model_name_or_path))
    if run.teacher in ASSET_MODELS:
        run.teacher = str(asset_model_dir(run.teacher))
        if hasattr(run.training, "teacher_model_name_or_path"):
            run.training.teacher_model_name_or_path = run.teacher


def _model_init_kwargs(model_args, training_args) -> dict:
    """TRL's scripts' ``model_init_kwargs``: revision, attention, dtype, trust_remote_code (+ the config's own)."""
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    kwargs.update(training_args.model_init_kwargs or {})
    return kwargs


def build_trainer(run: RunArguments, train, test, *, model=None, callbacks=None):
    """The trainer of ``run`` on ``train`` (and ``test`` for GKD's evaluation), on ``model`` when given."""
    from transformers import AutoTokenizer
    from trl import get_peft_config, get_quantization_config

    from ..trainers import GKDTrainer, MiniLLMTrainer, SPINTrainer

    resolve_model_paths(run)
    script, args, model_args = run.script, run.training, run.model
    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required: the student's folder.")
    if run.command != "spin" and not run.teacher:
        raise ValueError(f"teacher_model_name_or_path is required for {run.command}: the teacher's folder.")
    args.model_init_kwargs = _model_init_kwargs(model_args, args)
    if run.command != "spin":
        teacher_kwargs = dict(args.model_init_kwargs)
        teacher_kwargs.pop("revision", None)
        teacher_kwargs.update(args.teacher_model_init_kwargs or {})
        if isinstance(teacher_kwargs.get("quantization_config"), dict):  # YAML: the BitsAndBytesConfig keywords
            from transformers import BitsAndBytesConfig

            teacher_kwargs["quantization_config"] = BitsAndBytesConfig(**teacher_kwargs["quantization_config"])
        args.teacher_model_init_kwargs = teacher_kwargs
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, padding_side="left")
    given = model is not None
    common = dict(
        model=model if given else model_args.model_name_or_path,
        args=args,
        processing_class=tokenizer,
        callbacks=callbacks,
        quantization_config=None if given else get_quantization_config(model_args),
        peft_config=None if given else get_peft_config(model_args),
    )
    if given:
        args.model_init_kwargs = None  # the model is already loaded
    hooks = build_hooks(script)
    unsupported = sorted(set(hooks) - set(HOOKS_BY_TRAINER[run.command]))
    if unsupported:
        takes = ", ".join(HOOKS_BY_TRAINER[run.command])
        raise ValueError(f"{', '.join(unsupported)}: not a hook of {run.command} (it takes {takes}); remove it.")
    verifiers = [resolve_verifier(name, script, "train") for name in script.reward_funcs or []]
    if run.command == "gkd":
        success = verifiers[0] if verifiers and "curriculum" in hooks else None
        return GKDTrainer(
            teacher_model=run.teacher, train_dataset=train, eval_dataset=test, success_func=success, **hooks, **common
        )
    if run.command == "minillm":
        if "completion" in train.column_names:
            train = train.remove_columns("completion")
        return MiniLLMTrainer(teacher_model=run.teacher, reward_funcs=verifiers, train_dataset=train, **hooks, **common)
    return SPINTrainer(train_dataset=train, **hooks, **common)


def last_checkpoint(output_dir: str) -> str | None:
    """The last complete ``checkpoint-N`` folder of ``output_dir`` (``None`` when there is none).

    ``transformers.Trainer`` writes ``trainer_state.json`` last; a folder without it is a checkpoint whose writing was
    killed (measured: a kill during the model's write leaves ``checkpoint-N/`` without it, and resuming from it fails).
    Such folders are skipped, with a logged count.
    """
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        step = name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if step.isdigit() and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(step), os.path.join(output_dir, name)))
    incomplete = 0
    for _, path in sorted(found, reverse=True):
        if os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            if incomplete:
                logger.warning("skipped %d incomplete checkpoint(s) in %s (their writing was interrupted); resuming "
                               "from %s.", incomplete, output_dir, path)  # fmt: skip
            return path
        incomplete += 1
    if incomplete:
        logger.warning("%s holds only incomplete checkpoints (%d): training starts again.", output_dir, incomplete)
    return None


def train(trainer, command: str, resume) -> tuple[int, str | None]:
    """Train; returns ``(optimizer steps, the checkpoint resumed from)``. ``resume``: a path, ``True`` (the last
    checkpoint of ``output_dir``, if any), or ``None``/``False``."""
    output_dir = trainer.args.output_dir
    if command == "spin":
        history = trainer.train(resume=bool(resume))
        return sum(record.get("steps") or 0 for record in history), ("rounds" if resume else None)
    checkpoint = last_checkpoint(output_dir) if resume is True else (resume or None)
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer.state.global_step, checkpoint


def run_training(
    run: RunArguments,
    *,
    model=None,
    callbacks=None,
    resume=None,
    measure_before: bool = False,
    card_extra: dict | None = None,
) -> dict:
    """Train, measure and save one run; returns ``{command, steps, metrics, seconds, resumed_from, output_dir, ...}``.

    ``measure_before``: also measure the model before training (``metrics_before``), under a forked torch random state
    so that training samples exactly as without it.
    """
    from .card import write_model_card
    from .measure import measure

    start = time.perf_counter()
    train_set, test_set = load_splits(run.script)
    trainer = build_trainer(run, train_set, test_set, model=model, callbacks=callbacks)
    if resume is None:
        resume = run.training.resume_from_checkpoint
        resume = True if isinstance(resume, str) and resume.lower() in ("true", "last") else resume
    metrics_before = None
    if measure_before and test_set is not None:
        import torch

        devices = list(range(torch.cuda.device_count()))
        with torch.random.fork_rng(devices=devices):
            metrics_before = measure(trainer, run, test_set)
    train_start = time.perf_counter()
    steps, resumed_from = train(trainer, run.command, resume)
    train_seconds = time.perf_counter() - train_start
    metrics = final_training_metrics(trainer)
    if test_set is not None:
        metrics.update(measure(trainer, run, test_set))
    trainer.save_model(run.training.output_dir)
    result = {
        "command": run.command,
        "steps": steps,
        "metrics": metrics,
        "seconds": time.perf_counter() - start,
        "seconds_per_step": train_seconds / max(steps, 1),
        "resumed_from": resumed_from,
        "output_dir": run.training.output_dir,
        "train_rows": len(train_set),
        "test_rows": None if test_set is None else len(test_set),
        "metrics_before": metrics_before,
    }
    write_model_card(run, result, **(card_extra or {}))
    result["trainer"] = trainer
    return result


def final_training_metrics(trainer) -> dict:
    """The last logged value of each numeric training metric (``train/<name>``); SPIN: its last round's record."""
    if hasattr(trainer, "round_history"):
        last = trainer.round_history[-1] if trainer.round_history else {}
        keys = ("loss_end", "reward_margin", "kl")
        return {f"train/{k}": last[k] for k in keys if isinstance(last.get(k), (int, float))}
    out = {}
    for record in trainer.state.log_history:
        for key, value in record.items():
            if isinstance(value, (int, float)) and not key.startswith("eval_") and key not in ("epoch", "step"):
                out[f"train/{key}"] = value
    keep = ("train/loss", "train/train_loss", "train/grad_norm", "train/lmbda", "train/reward", "train/kl")
    return {key: value for key, value in out.items() if key in keep}
