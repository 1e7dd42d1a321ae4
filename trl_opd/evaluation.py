"""Guards to report beside the on-policy divergence, which alone rewards collapse.

A student that emits newlines and digits can reach a low divergence on its *own* samples, because the teacher
predicts repetition cheaply. These numbers expose that (:func:`guards`):

* ``fkl_on_teacher_samples``: mean per-token KL(p_T ‖ p_S) on completions the *teacher* sampled (off-policy view);
* ``rkl_on_student_samples``: mean per-token KL(p_S ‖ p_T) on the student's own samples (the on-policy view);
* ``student_eos_rate``: share of the student's samples that end with an end-of-sequence token;
* ``student_distinct_2``: distinct bigrams / bigrams over the student's samples (1 = no repetition, → 0 = loops).
"""

from __future__ import annotations

from .scoring import completion_log_probs, mean_divergence, sample  # noqa: F401  (sample, mean_divergence: public)


def distinct_n(sequences: list[list[int]], n: int = 2) -> float:
    """Distinct n-grams / total n-grams over all ``sequences`` (0.0 when there is no n-gram)."""
    grams = [tuple(seq[i : i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_token_log_prob(model, prompt_ids, completion_ids) -> float:
    """Token-mean ``log p_model(y_t | x, y<t)`` over the given completions."""
    rows = completion_log_probs(model, prompt_ids, completion_ids)
    count = sum(map(len, rows))
    return sum(map(sum, rows)) / max(count, 1)


def guards(
    student,
    teacher,
    prompt_ids: list[list[int]],
    *,
    pad_token_id: int,
    eos_token_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> dict[str, float]:
    """The guards of ``student`` against ``teacher`` on ``prompt_ids``: each model samples one completion per prompt
    (at ``temperature``, no top-k/top-p), then the divergences and the student's EOS rate and distinct-2."""
    kwargs = dict(
        pad_token_id=pad_token_id,
        eos_token_ids=list(eos_token_ids),
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,
    )
    student_samples = sample(student, prompt_ids, **kwargs)
    teacher_samples = sample(teacher, prompt_ids, **kwargs)
    eos = set(eos_token_ids)
    score = dict(vocab_size=vocab_size, temperature=temperature, pad_token_id=pad_token_id)
    return {
        "fkl_on_teacher_samples": mean_divergence(student, teacher, prompt_ids, teacher_samples, "fkl", **score),
        "rkl_on_student_samples": mean_divergence(student, teacher, prompt_ids, student_samples, "rkl", **score),
        "student_eos_rate": sum(bool(c) and c[-1] in eos for c in student_samples) / len(student_samples),
        "student_distinct_2": distinct_n(student_samples, 2),
    }


def sample_guards(trainer, dataset, max_new_tokens: int | None = None) -> dict[str, float]:
    """:func:`guards` of a distillation trainer (GKD, MiniLLM) on ``dataset``'s prompts: ``trainer.sample_guards``."""
    return trainer.sample_guards(dataset, max_new_tokens)
