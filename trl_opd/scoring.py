r"""Sampling and scoring token sequences with a causal LM: the one place that pads, samples and scores completions.

A batch of ``(prompt, completion)`` pairs is laid out as TRL lays out its generation batches: each prompt left-padded
to the longest prompt, its completion right after it, right-padded to the longest completion (:class:`PackedBatch`).
Scores come from the backbone's hidden states projected through the head chunk by chunk
(:mod:`trl_opd.divergences`), so no ``(B, T, V)`` logits are built:

* :func:`completion_token_log_probs`: ``log p(y_t | x, y<t)`` of every completion token;
* :func:`mean_divergence`: the token-mean divergence between two models on the same completions;
* :func:`sample`: one sampled (or greedy) completion per prompt, cut after the first end-of-sequence token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import cut_after_first_eos
from .divergences import LMHead, chunked_per_token_divergence, chunked_token_log_probs


@dataclass
class PackedBatch:
    """Prompts left-padded to ``prompt_width`` followed by their completions, right-padded.

    ``input_ids``/``attention_mask`` are ``(B, prompt_width + completion_width)``; the completion of row b occupies
    ``[prompt_width, prompt_width + len(completion_b))``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_width: int

    @property
    def completion_width(self) -> int:
        return self.input_ids.shape[1] - self.prompt_width

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]

    @property
    def completion_mask(self) -> torch.Tensor:
        return self.attention_mask[:, self.prompt_width :].bool()


def left_padded(sequences: list[list[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of the sequences left-padded to the longest one (the layout generation needs)."""
    width = max(map(len, sequences))
    ids = torch.tensor([[pad_token_id] * (width - len(s)) + list(s) for s in sequences], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], dtype=torch.long)
    return ids.to(device), mask.to(device)


def pack(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_token_id: int, device=None) -> PackedBatch:
    """Lay out ``(prompt, completion)`` pairs as a :class:`PackedBatch` (completions may be empty)."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions.")
    width_p = max(map(len, prompt_ids))
    width_c = max(1, max(map(len, completion_ids)))
    ids = torch.full((len(prompt_ids), width_p + width_c), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        ids[row, width_p - len(p) : width_p + len(c)] = torch.tensor(list(p) + list(c), dtype=torch.long)
        mask[row, width_p - len(p) : width_p + len(c)] = 1
    return PackedBatch(ids.to(device), mask.to(device), width_p)


def last_hidden_states(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int
) -> torch.Tensor:
    """Hidden states ``(B, logits_to_keep, H)`` that predict the last ``logits_to_keep`` tokens (before the lm_head).

    Runs the backbone only (no ``(B, T, V)`` logits). For a ``PeftModel`` the adapters are active inside the backbone.
    """
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return hidden[:, -logits_to_keep - 1 : -1, :]


def completion_hidden_states(model, batch: PackedBatch) -> torch.Tensor:
    """``(N, H)`` hidden states predicting the N completion tokens of the batch (row-major order)."""
    hidden = last_hidden_states(model, batch.input_ids, batch.attention_mask, batch.completion_width)
    return hidden[batch.completion_mask]


@torch.no_grad()
def completion_token_log_probs(
    model, batch: PackedBatch, *, temperature: float = 1.0, vocab_size: int | None = None
) -> torch.Tensor:
    """``(N,)`` float32 ``log p(y_t | x, y<t)`` of the N completion tokens under ``model`` (at ``temperature``)."""
    hidden = completion_hidden_states(model, batch)
    return chunked_token_log_probs(
        hidden,
        LMHead.of(model),
        batch.completion_ids[batch.completion_mask],
        temperature=temperature,
        vocab_size=vocab_size,
    )


def per_row(values: torch.Tensor, batch: PackedBatch) -> list[list[float]]:
    """Split ``(N,)`` per-completion-token values into one list per row."""
    return [chunk.tolist() for chunk in values.split(batch.completion_mask.sum(1).tolist())]


@torch.no_grad()
def completion_log_probs(
    model, prompt_ids: list[list[int]], completions: list[list[int]], pad_token_id: int = 0, batch_size: int = 32
) -> list[list[float]]:
    """``log p(y_t | x, y<t)`` of every completion token (temperature 1), ``batch_size`` rows per forward pass."""
    device = next(model.parameters()).device
    out: list[list[float]] = []
    for start in range(0, len(prompt_ids), batch_size):
        batch = pack(
            prompt_ids[start : start + batch_size], completions[start : start + batch_size], pad_token_id, device
        )
        out += per_row(completion_token_log_probs(model, batch), batch)
    return out


def sequence_log_probs(model, prompt_ids: list[list[int]], completions: list[list[int]], pad_token_id: int = 0):
    """``(N,)`` ``log p(y | x) = Σ_t log p(y_t | x, y<t)`` of each completion (no gradient)."""
    return torch.tensor([sum(row) for row in completion_log_probs(model, prompt_ids, completions, pad_token_id)])


@torch.no_grad()
def completion_divergences(
    student,
    teacher,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    divergence: str = "fkl",
    beta: float = 0.5,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    pad_token_id: int = 0,
    batch_size: int = 32,
) -> list[list[float]]:
    """The per-token divergence between the teacher's and the student's next-token distributions at every completion
    token, one list per row (``student`` and ``teacher`` are any two models sharing the tokenizer)."""
    device = next(student.parameters()).device
    teacher_device = next(teacher.parameters()).device
    student_head, teacher_head = LMHead.of(student), LMHead.of(teacher).detached()
    vocab_size = vocab_size or min(student_head.rows, teacher_head.rows)
    out: list[list[float]] = []
    for start in range(0, len(prompt_ids), batch_size):
        batch = pack(
            prompt_ids[start : start + batch_size], completion_ids[start : start + batch_size], pad_token_id, device
        )
        if not batch.completion_mask.any():
            out += [[] for _ in range(batch.input_ids.shape[0])]
            continue
        h_s = completion_hidden_states(student, batch)
        teacher_batch = PackedBatch(
            batch.input_ids.to(teacher_device), batch.attention_mask.to(teacher_device), batch.prompt_width
        )
        h_t = completion_hidden_states(teacher, teacher_batch).to(device)
        values = chunked_per_token_divergence(
            h_s, h_t, student_head, teacher_head, divergence, beta, temperature, vocab_size=vocab_size
        )
        out += per_row(values, batch)
    return out


def mean_divergence(
    student,
    teacher,
    prompt_ids,
    completion_ids,
    divergence="fkl",
    beta=0.5,
    vocab_size=None,
    temperature=1.0,
    pad_token_id=0,
    batch_size=32,
) -> float:
    """Token-mean divergence between the teacher and the student on the given completions (0 without tokens)."""
    rows = completion_divergences(
        student,
        teacher,
        prompt_ids,
        completion_ids,
        divergence,
        beta,
        vocab_size,
        temperature,
        pad_token_id,
        batch_size,
    )
    return sum(map(sum, rows)) / max(sum(map(len, rows)), 1)


@torch.no_grad()
def sample(model, prompt_ids: list[list[int]], pad_token_id: int, eos_token_ids: list[int], **generate_kwargs):
    """One completion per prompt from ``model.generate`` (left-padded batch, eval mode), each cut after its first
    end-of-sequence token."""
    device = next(model.parameters()).device
    input_ids, attention_mask = left_padded(prompt_ids, pad_token_id, device)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_ids,
            **generate_kwargs,
        )
    finally:
        model.train(was_training)
    return [cut_after_first_eos(row, eos_token_ids) for row in out[:, input_ids.shape[1] :].tolist()]
