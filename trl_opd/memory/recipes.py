"""Packaged recipes: a Qwen2.5-7B-shaped NF4 + LoRA student with 7B / 14B / 32B teachers in bf16 or NF4."""

from __future__ import annotations

from dataclasses import replace

from .plan import TrainingPlan
from .shapes import ModelShape


#: The recipe plans: a Qwen2.5-7B-shaped student in NF4 with LoRA r=16 on all linear layers, 2k tokens (512 prompt
#: + 1536 completion), one sequence per micro-batch, 8 accumulation steps (so HF generate samples 8 sequences at
#: once), gradient checkpointing, JSD, HF generate. Teachers: Qwen2.5-7B / 14B / 32B shapes in bf16 or NF4.
RECIPE_PLAN = TrainingPlan(
    student_quant="nf4",
    lora_rank=16,
    per_device_batch_size=1,
    gradient_accumulation_steps=8,
    prompt_length=512,
    completion_length=1536,
    gradient_checkpointing=True,
)
RECIPES: dict[str, tuple[str, str, TrainingPlan]] = {
    f"7b-nf4-{size}-{quant}": ("qwen2.5-7b", f"qwen2.5-{size}", replace(RECIPE_PLAN, teacher_quant=quant))
    for size in ("7b", "14b", "32b")
    for quant in ("bf16", "nf4")
}


def recipe(name: str) -> tuple[ModelShape, ModelShape, TrainingPlan]:
    """The student shape, teacher shape and plan of a named recipe (see :data:`RECIPES`)."""
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    student, teacher, plan = RECIPES[name]
    return ModelShape.from_dir(student), ModelShape.from_dir(teacher), replace(plan)
