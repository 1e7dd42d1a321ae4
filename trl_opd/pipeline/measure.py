"""Held-out measurements after a run: the collapse guards and the verifiers' task scores.

* the guards of :func:`trl_opd.evaluation.guards` (one sample per prompt from each model at the run's temperature):
  ``fkl_on_teacher_samples``, ``rkl_on_student_samples``, ``student_eos_rate``, ``student_distinct_2``;
* for each verifier ``f``: ``<f>_greedy`` (the mean score of the greedy completions) and ``<f>_sampled`` (sampled
  pass@1: the mean score of ``eval_num_samples`` completions per prompt at the run's temperature).

GKD and MiniLLM measure against the trainer's own (live) teacher; SPIN, which trains without one, loads
``teacher_model_name_or_path`` for the guards when it is given, and otherwise reports the task scores alone.
"""

from __future__ import annotations

import logging

from ..data import prompt_token_ids
from ..evaluation import guards, sample
from .inputs import resolve_verifier


logger = logging.getLogger(__name__)


def _student_and_teacher(trainer, run):
    """``(student, teacher or None, vocab_size, eos ids, temperature, max_new_tokens)`` of a finished trainer."""
    if run.command == "spin":
        from ..models import load_model, shared_vocab_size

        student = trainer.model  # the adapter active under PEFT
        teacher = None
        vocab = None
        if run.teacher:
            teacher = load_model(run.teacher, run.training.model_init_kwargs, run.training, role="teacher_model")
            teacher.to(next(student.parameters()).device).eval()
            vocab = shared_vocab_size(student, teacher, trainer.processing_class)
        temperature = run.training.generation_temperature
        return student, teacher, vocab, trainer.eos_token_ids, temperature, run.training.max_completion_length
    student = trainer.accelerator.unwrap_model(trainer.model)
    if run.command == "grpo":  # TRL's GRPOTrainer: no teacher, the task scores alone
        eos = [trainer.processing_class.eos_token_id]
        return student, None, None, eos, trainer.temperature, trainer.max_completion_length
    teacher = None if trainer.teacher is None else trainer.teacher.unwrapped
    return (
        student,
        teacher,
        trainer.vocab_size,
        list(trainer.eos_token_ids),
        trainer.temperature,
        (trainer.max_completion_length),
    )


def _scores(verifier, dataset, prompts_repeat: int, completions: list[str], conversational: bool) -> float:
    """Mean of ``verifier`` over the completions (each dataset row repeated ``prompts_repeat`` times)."""
    columns = {
        name: [value for value in dataset[name] for _ in range(prompts_repeat)]
        for name in dataset.column_names
        if name not in ("prompt", "completion")
    }
    prompts = [p for p in dataset["prompt"] for _ in range(prompts_repeat)]
    if conversational:
        completions = [[{"role": "assistant", "content": text}] for text in completions]
    values = verifier(prompts=prompts, completions=completions, **columns)
    values = [0.0 if v is None else float(v) for v in values]
    return sum(values) / max(len(values), 1)


def measure(trainer, run, dataset) -> dict[str, float]:
    """The held-out guards and task scores of ``trainer``'s model on ``dataset`` (see the module docstring)."""
    student, teacher, vocab, eos, temperature, max_new_tokens = _student_and_teacher(trainer, run)
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    chat_kwargs = getattr(run.training, "chat_template_kwargs", None)
    prompts = [prompt_token_ids(tokenizer, p, chat_kwargs) for p in dataset["prompt"]]
    metrics: dict[str, float] = {}
    if teacher is not None:
        metrics.update(guards(student, teacher, prompts, pad_token_id=tokenizer.pad_token_id, eos_token_ids=eos,
                              max_new_tokens=max_new_tokens, temperature=temperature, vocab_size=vocab))  # fmt: skip
    else:
        logger.warning("No live teacher for %s: the guards are not measured (task scores only).", run.command)
    verifiers = [resolve_verifier(name, run.script, "test") for name in run.script.reward_funcs or []]
    if verifiers:
        conversational = isinstance(dataset[0]["prompt"], list)
        kwargs = dict(pad_token_id=tokenizer.pad_token_id, eos_token_ids=eos, max_new_tokens=max_new_tokens)
        greedy = tokenizer.batch_decode(sample(student, prompts, do_sample=False, **kwargs), skip_special_tokens=True)
        n = run.script.eval_num_samples
        sampled = []
        if n:
            repeated = [p for p in prompts for _ in range(n)]
            sampled = sample(student, repeated, do_sample=True, temperature=temperature, top_k=0, **kwargs)
            sampled = tokenizer.batch_decode(sampled, skip_special_tokens=True)
        for verifier in verifiers:
            name = getattr(verifier, "__name__", "verifier")
            metrics[f"{name}_greedy"] = _scores(verifier, dataset, 1, greedy, conversational)
            if n:
                metrics[f"{name}_sampled"] = _scores(verifier, dataset, n, sampled, conversational)
    return metrics
