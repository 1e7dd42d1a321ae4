"""Shared test helpers: a CPU DistillationConfig with λ = β = 0.5 (trl-opd 0.1's GKDConfig) and a MiniLLM config, and
their trainers on tiny models."""

from trl_opd import DistillationConfig, GKDTrainer, MiniLLMConfig, MiniLLMTrainer
from trl_opd.tiny import tiny_llama


#: Trainer arguments every CPU test run shares (no bf16, no checkpoints, no reporting, seeded).
CPU_TRAINING_ARGS = dict(
    bf16=False,
    use_cpu=True,
    report_to=[],
    logging_steps=1,
    save_strategy="no",
    gradient_checkpointing=False,
    seed=0,
)


def make_config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=1,
        max_steps=2,
        max_completion_length=6,
        learning_rate=1e-3,
        lmbda=0.5,
        beta=0.5,
        **CPU_TRAINING_ARGS,
    )
    values.update(overrides)
    return DistillationConfig(**values)


HOOK_ARGUMENTS = ("token_importance", "prefix_filter", "curriculum", "success_func")


def make_trainer(tmp_path, tok, dataset, student=None, teacher=None, **overrides):
    """A GKDTrainer on tiny models; keyword arguments are GKDConfig fields or the trainer's hook arguments."""
    student = student if student is not None else tiny_llama(len(tok), tokenizer=tok, seed=1)
    teacher = teacher if teacher is not None else tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=48)
    hooks = {key: overrides.pop(key) for key in HOOK_ARGUMENTS if key in overrides}
    return GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=make_config(tmp_path, **overrides),
        train_dataset=dataset,
        processing_class=tok,
        **hooks,
    )


def make_minillm_config(tmp_path, **overrides):
    """A MiniLLMConfig for CPU runs: 8 prompts x 4 generations per step, 2 steps, 6 completion tokens."""
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=2,
        max_completion_length=6,
        learning_rate=3e-3,
        disable_tqdm=True,
        **CPU_TRAINING_ARGS,
    )
    values.update(overrides)
    return MiniLLMConfig(**values)


def make_minillm_trainer(tmp_path, tok, dataset, student=None, teacher=None, reward_funcs=None, **overrides):
    """A MiniLLMTrainer on tiny models; keyword arguments are MiniLLMConfig fields or the trainer's hook arguments."""
    student = student if student is not None else tiny_llama(len(tok), tokenizer=tok, seed=1)
    teacher = teacher if teacher is not None else tiny_llama(len(tok), tokenizer=tok, seed=2)
    hooks = {key: overrides.pop(key) for key in ("token_importance", "prefix_filter") if key in overrides}
    return MiniLLMTrainer(
        model=student,
        teacher_model=teacher,
        reward_funcs=reward_funcs,
        args=make_minillm_config(tmp_path, **overrides),
        train_dataset=dataset,
        processing_class=tok,
        **hooks,
    )


def record_generate_masks(trainer) -> list:
    """Wrap ``trainer.model.generate`` so that each call's ``attention_mask`` is appended to the returned list: how a
    test sees the padding side the prompts reached generation with."""
    seen = []
    original = trainer.model.generate

    def recording_generate(*args, **kwargs):
        seen.append(kwargs["attention_mask"].clone())
        return original(*args, **kwargs)

    trainer.model.generate = recording_generate
    return seen
