"""``trl-opd plan``: predict the peak GPU memory of a distillation run (:mod:`trl_opd.memory`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace

from . import UsageError


# command-line flag -> TrainingPlan field (flags left unset keep the recipe's or the plan's default)
_PLAN_FLAGS = {
    "student_quant": "student_quant",
    "teacher_quant": "teacher_quant",
    "double_quant": "double_quant",
    "lora_rank": "lora_rank",
    "lora_targets": "lora_targets",
    "lora_dropout": "lora_dropout",
    "batch": "per_device_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "prompt_length": "prompt_length",
    "completion_length": "completion_length",
    "gradient_checkpointing": "gradient_checkpointing",
    "optimizer": "optimizer",
    "divergence": "divergence",
    "loss_chunk_rows": "loss_chunk_rows",
    "generation_backend": "generation_backend",
    "vllm_gpu_memory_utilization": "vllm_gpu_memory_utilization",
}


def register(subparsers) -> None:
    from ..memory import DIVERGENCES, GENERATION_BACKENDS, GPU_SIZES_GB, OPTIMIZERS, QUANTIZATIONS, RECIPES

    parser = subparsers.add_parser(
        "plan",
        help="predict peak GPU memory of a distillation run and which GPU sizes it fits",
        description=(
            "Predict the peak GPU memory of on-policy distillation (GKD) from the student's and the teacher's "
            "config.json and the training settings: bytes per part, the peak phase, which GPU sizes fit, and the "
            "cheapest change that makes it fit. Nothing is downloaded or loaded. Defaults: LoRA r=16 on all linear "
            "layers, batch 1, 512+1536 tokens, gradient checkpointing on (TRL's defaults where TRL has one)."
        ),
    )
    models = parser.add_argument_group("models")
    models.add_argument("--student", help="folder with the student's config.json, or a packaged shape (qwen2.5-7b)")
    models.add_argument("--teacher", help="folder with the teacher's config.json, or a packaged shape (qwen2.5-14b)")
    models.add_argument("--recipe", choices=sorted(RECIPES), help="start from a packaged recipe; flags override it")
    models.add_argument("--list-recipes", action="store_true", help="list the recipes and packaged shapes, then exit")
    quant = parser.add_argument_group("quantization")
    quant.add_argument("--student-quant", choices=QUANTIZATIONS)
    quant.add_argument("--teacher-quant", choices=QUANTIZATIONS)
    quant.add_argument("--double-quant", action=argparse.BooleanOptionalAction, help="bnb_4bit_use_double_quant")
    train = parser.add_argument_group("training")
    train.add_argument("--lora-rank", type=int, help="LoRA rank; 0 = full fine-tuning (default 16)")
    train.add_argument("--lora-targets", nargs="+", metavar="MODULE", help="LoRA target modules (default: all-linear)")
    train.add_argument("--lora-dropout", type=float)
    train.add_argument("--batch", type=int, help="per_device_train_batch_size (default 1)")
    train.add_argument("--gradient-accumulation-steps", type=int, help="(default 1); generation batch = batch × this")
    train.add_argument("--prompt-length", type=int, help="prompt tokens (default 512)")
    train.add_argument("--completion-length", type=int, help="max_completion_length (default 1536)")
    train.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, help="(default on)")
    train.add_argument("--optimizer", choices=OPTIMIZERS)
    train.add_argument("--divergence", choices=DIVERGENCES)
    train.add_argument("--loss-chunk-rows", type=int, help="rows per loss tile (default max(48, 2**22 // vocab))")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--generation-backend", choices=GENERATION_BACKENDS)
    gen.add_argument("--vllm-gpu-memory-utilization", type=float)
    out = parser.add_argument_group("output")
    out.add_argument("--gpu", type=float, nargs="+", default=list(GPU_SIZES_GB), metavar="GB",
                     help=f"GPU sizes to check, in GB (default {' '.join(map(str, GPU_SIZES_GB))})")  # fmt: skip
    out.add_argument("--json", action="store_true", help="print the estimate as JSON (bytes) instead of the table")
    parser.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from ..memory import RECIPES, ModelShape, TrainingPlan, packaged_configs, predict

    if args.list_recipes:
        for name, (student, teacher, plan) in RECIPES.items():
            print(f"{name:<18} student {student}, teacher {teacher}: {plan.describe()}")
        print("packaged shapes:", ", ".join(packaged_configs()))
        return 0
    base = TrainingPlan()
    student = teacher = None
    if args.recipe:
        student, teacher, base = RECIPES[args.recipe]
    student = args.student or student
    teacher = args.teacher or teacher
    missing = [flag for flag, value in (("--student", student), ("--teacher", teacher)) if value is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise UsageError(f"{' and '.join(missing)} {verb} required (or --recipe NAME).")
    overrides = {
        field_name: getattr(args, flag) for flag, field_name in _PLAN_FLAGS.items() if getattr(args, flag) is not None
    }
    if "lora_targets" in overrides:
        overrides["lora_targets"] = tuple(overrides["lora_targets"])
    known = {f.name for f in fields(TrainingPlan)}
    plan = replace(base, **{k: v for k, v in overrides.items() if k in known})
    estimate = predict(ModelShape.from_dir(student), ModelShape.from_dir(teacher), plan)
    if args.json:
        print(json.dumps(estimate.to_dict(args.gpu), indent=2))
    else:
        print(estimate.table(args.gpu))
    return 0
