"""The cheapest fix: the least costly change of a :class:`TrainingPlan` that makes an estimate fit a GPU size.

:data:`FIX_ORDER` ranks the changes by what they cost (speed first, then the update, then the model, then what is
learned); :func:`fix_candidates` lists each change's settings, mildest first; :func:`cheapest_fix` searches them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .formulas import tile_rows
from .plan import TrainingPlan
from .shapes import ModelShape


@dataclass(frozen=True)
class Fix:
    """A change to a :class:`TrainingPlan` and the :class:`~trl_opd.memory.MemoryEstimate` it gives."""

    description: str
    plan: TrainingPlan
    estimate: Any

    def __str__(self) -> str:
        return self.description


#: The order in which :meth:`MemoryEstimate.cheapest_fix` tries changes: the first four leave the training signal
#: unchanged and only cost speed (a smaller loss tile: more, smaller matmuls; checkpointing: ~1/3 more student
#: forward compute, small next to generation in on-policy training; a smaller vLLM share: fewer concurrent sequences;
#: a smaller micro-batch with more accumulation: same generation batch and same gradient). 8-bit AdamW perturbs the
#: update slightly. Then the model changes: training LoRA instead of all weights, an NF4 student (QLoRA, the standard
#: path), an NF4 teacher (changes the target distribution itself: TRL stopped quantizing teachers by default; the cost
#: on SmolLM2 is in docs/memory.md), a lower LoRA rank (capacity), and last shorter completions (what is learned).
FIX_ORDER = (
    "loss_chunk",
    "gradient_checkpointing",
    "vllm_share",
    "micro_batch",
    "optimizer_8bit",
    "lora_instead_of_full",
    "nf4_student",
    "nf4_teacher",
    "lora_rank",
    "completion_length",
)


def fix_candidates(name: str, plan: TrainingPlan, student: ModelShape) -> list[tuple[str, dict]]:
    """``(description, TrainingPlan field overrides)`` for one change, mildest first (empty when not applicable)."""
    out: list[tuple[str, dict]] = []
    if name == "loss_chunk":
        rows = tile_rows(student, plan)
        for factor in (2, 4, 8):
            if rows // factor >= 8:
                out.append((f"loss chunk {rows} -> {rows // factor} rows", {"loss_chunk_rows": rows // factor}))
    elif name == "gradient_checkpointing" and not plan.gradient_checkpointing:
        out.append(("enable gradient checkpointing", {"gradient_checkpointing": True}))
    elif name == "vllm_share" and plan.generation_backend == "vllm":
        share = plan.vllm_gpu_memory_utilization
        for value in (0.25, 0.2, 0.15, 0.1):
            if value < share:
                description = f"vllm_gpu_memory_utilization {share:g} -> {value:g}"
                out.append((description, {"vllm_gpu_memory_utilization": value}))
    elif name == "micro_batch":
        batch, accumulation = plan.per_device_batch_size, plan.gradient_accumulation_steps
        while batch > 1:
            batch, accumulation = batch // 2, accumulation * 2
            out.append(
                (
                    f"per_device_train_batch_size {plan.per_device_batch_size} -> {batch} with "
                    f"gradient_accumulation_steps {plan.gradient_accumulation_steps} -> {accumulation}",
                    {"per_device_batch_size": batch, "gradient_accumulation_steps": accumulation},
                )
            )
    elif name == "optimizer_8bit" and plan.optimizer == "adamw" and plan.full_finetuning:
        out.append(("8-bit AdamW (optim='adamw_bnb_8bit')", {"optimizer": "adamw_8bit"}))
    elif name == "lora_instead_of_full" and plan.full_finetuning:
        out.append(("LoRA r=16 on all linear layers instead of full fine-tuning", {"lora_rank": 16}))
    elif name == "nf4_student" and plan.student_quant != "nf4" and not plan.full_finetuning:
        out.append((f"NF4 student (QLoRA) instead of {plan.student_quant}", {"student_quant": "nf4"}))
    elif name == "nf4_teacher" and plan.teacher_quant != "nf4" and plan.loads_teacher and plan.self_teacher == "none":
        out.append((f"NF4 teacher instead of {plan.teacher_quant}", {"teacher_quant": "nf4"}))
    elif name == "lora_rank" and not plan.full_finetuning:
        rank = plan.lora_rank
        while rank > 4:
            rank //= 2
            out.append((f"LoRA rank {plan.lora_rank} -> {rank}", {"lora_rank": rank}))
    elif name == "completion_length":
        length = plan.completion_length
        while length > 256:
            length //= 2
            out.append((f"max_completion_length {plan.completion_length} -> {length}", {"completion_length": length}))
    return out


def cheapest_fix(base, gpu_gb: float) -> Fix | None:
    """The least costly change that makes ``base`` (a :class:`~trl_opd.memory.MemoryEstimate`) fit ``gpu_gb``;
    ``None`` if it already fits.

    Each change of :data:`FIX_ORDER` (cheapest in quality and speed first) is tried alone, from its mildest
    setting up; the first that fits is returned. If no single change is enough, the changes are stacked in that
    order (each at its strongest setting) until the plan fits, and then each stacked change is relaxed to its
    mildest setting, or dropped, as long as the plan still fits. Raises ``ValueError`` when even every change
    together does not fit.
    """
    if base.fits(gpu_gb):
        return None
    fit = lambda overrides: base.replanned(**overrides)  # noqa: E731
    for name in FIX_ORDER:
        for description, overrides in fix_candidates(name, base.plan, base.student):
            estimate = fit(overrides)
            if estimate.fits(gpu_gb):
                return Fix(description, estimate.plan, estimate)
    # Stack changes until it fits.
    chosen: list[list[tuple[str, dict]]] = []  # per stacked change: its candidates, mildest first
    merged: dict = {}
    for name in FIX_ORDER:
        candidates = fix_candidates(name, replace(base.plan, **merged), base.student)
        if not candidates:
            continue
        chosen.append(candidates)
        merged.update(candidates[-1][1])
        if fit(merged).fits(gpu_gb):
            break
    else:
        raise ValueError(
            f"Does not fit {gpu_gb:g} GB even with every change ("
            + "; ".join(c[-1][0] for c in chosen)
            + f"): {fit(merged).total_gib(gpu_gb):.1f} GiB. Use a smaller model or more GPUs."
        )
    # Relax each stacked change (first = cheapest) to its mildest setting that still fits, or drop it.
    picks = [len(c) - 1 for c in chosen]
    for k, candidates in enumerate(chosen):
        for option in [None, *range(len(candidates))]:
            trial = picks[:k] + [option] + picks[k + 1 :]
            if fit(_merge(chosen, trial)[0]).fits(gpu_gb):
                picks = trial
                break
    overrides, descriptions = _merge(chosen, picks)
    estimate = fit(overrides)
    return Fix("; ".join(descriptions), estimate.plan, estimate)


def _merge(chosen: list[list[tuple[str, dict]]], picks: list[int | None]) -> tuple[dict, list[str]]:
    """The overrides and descriptions of the picked setting of each stacked change (``None``: the change dropped)."""
    overrides, descriptions = {}, []
    for candidates, pick in zip(chosen, picks):
        if pick is not None:
            overrides.update(candidates[pick][1])
            descriptions.append(candidates[pick][0])
    return overrides, descriptions
