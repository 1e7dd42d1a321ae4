"""Guards to report beside the on-policy divergence, which alone rewards collapse.

A student that emits newlines and digits can reach a low divergence on its *own* samples, because the teacher
predicts repetition cheaply. These numbers expose that:

* ``fkl_on_teacher_samples``: mean per-token KL(p_T ‖ p_S) on completions the *teacher* sampled (off-policy view);
* ``student_eos_rate``: share of the student's samples that end with an end-of-sequence token;
* ``student_distinct_2``: distinct bigrams / bigrams over the student's samples (1 = no repetition, → 0 = loops).
"""

from __future__ import annotations

import torch

from .data import cut_after_first_eos
from .divergences import per_token_divergence


def distinct_n(sequences: list[list[int]], n: int = 2) -> float:
    """Distinct n-grams / total n-grams over all ``sequences`` (0.0 when there is no n-gram)."""
    grams = [tuple(seq[i : i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def sample(model, prompt_ids: list[list[int]], pad_token_id: int, eos_token_ids: list[int], **generate_kwargs):
    """Sample one completion per prompt (left-padded batch); each is cut after its first end-of-sequence token."""
    device = next(model.parameters()).device
    width = max(map(len, prompt_ids))
    input_ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in prompt_ids], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    was_training = model.training
    model.eval()
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_ids,
        **generate_kwargs,
    )
    model.train(was_training)
    return [cut_after_first_eos(row, eos_token_ids) for row in out[:, width:].tolist()]


@torch.no_grad()
def mean_divergence(student, teacher, prompt_ids, completion_ids, divergence="fkl", beta=0.5, vocab_size=None):
    """Token-mean divergence between teacher and student on the given completions (one row at a time)."""
    total, count = 0.0, 0
    for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
        if not completion:
            continue
        ids = torch.tensor([prompt + completion], device=next(student.parameters()).device)
        k = len(completion)
        s = student(input_ids=ids).logits[0, -k - 1 : -1, :vocab_size]
        t = teacher(input_ids=ids.to(next(teacher.parameters()).device)).logits[0, -k - 1 : -1, :vocab_size]
        total += per_token_divergence(s, t.to(s.device), divergence, beta).sum().item()
        count += k
    return total / max(count, 1)


@torch.no_grad()
def mean_token_log_prob(model, prompt_ids, completion_ids) -> float:
    """Token-mean ``log p_model(y_t | x, y<t)`` over the given completions (one row at a time)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
        if not completion:
            continue
        ids = torch.tensor([prompt + completion], device=device)
        log_probs = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
        total += log_probs.gather(-1, ids[0, len(prompt) :].unsqueeze(-1)).sum().item()
        count += len(completion)
    return total / max(count, 1)


def sample_guards(trainer, dataset, max_new_tokens: int | None = None) -> dict[str, float]:
    """The three guards for a GKD-style trainer's student and teacher on ``dataset``'s prompts."""
    student = trainer.accelerator.unwrap_model(trainer.model)
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    prompt_ids, _, _ = trainer._tokenize_prompts(list(dataset["prompt"]))
    kwargs = dict(
        pad_token_id=trainer._tokenizer.pad_token_id,
        eos_token_ids=list(trainer.eos_token_ids),
        max_new_tokens=max_new_tokens or trainer.max_completion_length,
        do_sample=True,
        temperature=trainer.temperature,
        top_k=0,
    )
    student_samples = sample(student, prompt_ids, **kwargs)
    teacher_samples = sample(teacher, prompt_ids, **kwargs)
    eos = set(trainer.eos_token_ids)
    return {
        "fkl_on_teacher_samples": mean_divergence(
            student, teacher, prompt_ids, teacher_samples, "fkl", vocab_size=trainer.vocab_size
        ),
        "student_eos_rate": sum(bool(c) and c[-1] in eos for c in student_samples) / len(student_samples),
        "student_distinct_2": distinct_n(student_samples, 2),
    }
