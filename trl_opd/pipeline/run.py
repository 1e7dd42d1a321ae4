"""One ``trl-opd gkd|minillm|spin`` run: data, hooks and verifiers from the keys, the trainer, train, measure, save.

:func:`run_training` is what the command line and every pipeline stage call. It

1. loads the train and test splits, the hooks and the verifiers (:mod:`.inputs`);
2. builds the trainer like TRL's own scripts (model path + ``get_quantization_config`` / ``get_peft_config``), or on a
   given model (a pipeline stage continuing the previous stage's adapter);
3. trains (from ``resume_from_checkpoint``: a path, or ``True`` for the last ``checkpoint-N`` of ``output_dir``);
4. measures the held-out guards and task scores (:mod:`trl_opd.pipeline.measure`);
5. saves the model (or adapter) and the tokenizer into ``output_dir`` with a model card (:mod:`.card`).
"""

from __future__ import annotations

import logging
import os
import time

from .arguments import RunArguments
from .card import write_model_card
from .commands import HOOKS_BY_TRAINER
from .inputs import build_hooks, load_splits, resolve_verifier


logger = logging.getLogger(__name__)


def resolve_model_paths(run: RunArguments) -> None:
    """Packaged model names (``smollm2:student``, :data:`trl_opd.assets.ASSET_MODELS`) become their folders."""
    from ..assets import ASSET_MODELS, asset_model_dir

    if run.model.model_name_or_path in ASSET_MODELS:
        run.model.model_name_or_path = str(asset_model_dir(run.model.model_name_or_path))
    if run.teacher in ASSET_MODELS:
        run.teacher = str(asset_model_dir(run.teacher))
        if hasattr(run.training, "teacher_model_name_or_path"):
            run.training.teacher_model_name_or_path = run.teacher


def model_init_kwargs(model_args, training_args) -> dict:
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
    self_taught = run.command in ("spin", "grpo") or getattr(args, "privileged_teacher", None) is not None
    if not self_taught and not run.teacher:
        raise ValueError(
            f"teacher_model_name_or_path is required for {run.command}: the teacher's folder (or privileged_teacher: "
            "the student shown each row's privileged_context)."
        )
    args.model_init_kwargs = model_init_kwargs(model_args, args)
    if run.command not in ("spin", "grpo"):
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
    teacher = run.teacher
    if getattr(args, "privileged_teacher", None) is not None and teacher:
        # A recipe's teacher is a default of every stage; an OPSD stage's teacher is the student itself.
        logger.info("privileged_teacher=%r: the stage's teacher is the student; %s is not loaded.",
                    args.privileged_teacher, teacher)  # fmt: skip
        teacher = args.teacher_model_name_or_path = None
    if run.command == "gkd":
        success = verifiers[0] if verifiers and "curriculum" in hooks else None
        return GKDTrainer(
            teacher_model=teacher, train_dataset=train, eval_dataset=test, success_func=success, **hooks, **common
        )
    if run.command == "minillm":
        if "completion" in train.column_names:
            train = train.remove_columns("completion")
        return MiniLLMTrainer(teacher_model=teacher, reward_funcs=verifiers, train_dataset=train, **hooks, **common)
    if run.command == "grpo":
        return grpo_trainer(verifiers, train, common)
    return SPINTrainer(train_dataset=train, **hooks, **common)


def grpo_trainer(verifiers: list, train, common: dict):
    """TRL's own ``GRPOTrainer`` on the recipe's verifiers, trained on the model (and adapter) the stage is given."""
    from trl import GRPOTrainer

    if not verifiers:
        raise ValueError("A grpo stage trains on verifiers alone: set reward_funcs (e.g. ['reasoning_gym:<task>']).")
    if "completion" in train.column_names:
        train = train.remove_columns("completion")  # the stage samples its own completions
    return GRPOTrainer(reward_funcs=verifiers, train_dataset=train, **common)


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
    from .measure import measure  # loads torch (the guards), which the other steps import when they run

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
    out = {key: value for key, value in out.items() if key in keep}
    mean = mean_logged_loss(trainer.state.log_history)
    if mean is not None:  # transformers' train_loss covers only the steps of the last train() call (not a resume's)
        out["train/train_loss"] = mean
    return out


def mean_logged_loss(log_history: list[dict]) -> float | None:
    """The training loss averaged over every optimizer step of the run: each logged ``loss`` (the mean over its
    logging window) weighted by the steps of that window. A resumed run's history holds the steps before the
    checkpoint too, so this is the whole run's mean; ``None`` when no loss was logged."""
    total, steps, last = 0.0, 0, 0
    for record in log_history:
        if isinstance(record.get("loss"), (int, float)) and isinstance(record.get("step"), int):
            window = record["step"] - last
            if window > 0:
                total, steps, last = total + record["loss"] * window, steps + window, record["step"]
    return total / steps if steps else None
