"""``trl-opd plan``: predict the peak GPU memory of a distillation run (:mod:`trl_opd.memory`).

The settings' flags are generated from :class:`trl_opd.memory.TrainingPlan`'s fields (:func:`add_plan_flags`): the
flag is ``--`` plus the field's name with dashes (or its metadata's ``flag``: ``--batch`` for
``per_device_batch_size``), the help, choices and group come from the field's metadata, and the argument type from its
annotation (``bool``: ``--x`` / ``--no-x``; ``tuple[str, ...]``: one or more values; ``int | None``: an int). Every
flag defaults to ``None``, "not given", so a recipe's settings stay unless a flag overrides them.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import MISSING, Field, fields, replace

from . import UsageError


#: The order of the plan's argument groups in ``--help`` (between "models" and "output").
PLAN_GROUPS = ("quantization", "training", "generation", "teacher")


def register(subparsers) -> None:
    from ..memory import GPU_SIZES_GB, RECIPES

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
    models.add_argument(
        "--config", metavar="FILE.yaml", help="a training YAML or a pipeline recipe (one plan per stage); flags win"
    )
    models.add_argument("--list-recipes", action="store_true", help="list the recipes and packaged shapes, then exit")
    add_plan_flags(parser)
    add_multi_gpu_flags(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--gpu", type=float, nargs="+", default=list(GPU_SIZES_GB), metavar="GB",
                     help=f"GPU sizes to check, in GB (default {' '.join(map(str, GPU_SIZES_GB))})")  # fmt: skip
    out.add_argument("--json", action="store_true", help="print the estimate as JSON (bytes) instead of the table")
    parser.set_defaults(func=run_plan)


def add_multi_gpu_flags(parser: argparse.ArgumentParser) -> None:
    """``--engine``, ``--gpus``, ``--teacher-placement``: per-GPU memory (:mod:`trl_opd.memory.multi_gpu`)."""
    from ..memory.multi_gpu import ENGINES, TEACHER_PLACEMENTS

    group = parser.add_argument_group("multi-GPU (docs/multi-gpu.md)")
    group.add_argument("--engine", choices=ENGINES, help="report memory per GPU under this engine (with --gpus)")
    group.add_argument("--gpus", type=int, metavar="N", help="number of GPUs of the run (with --engine)")
    group.add_argument(
        "--teacher-placement",
        choices=TEACHER_PLACEMENTS,
        help="one teacher placement (default: every placement the engine offers)",
    )


def _multi_gpu(args) -> bool:
    """Whether per-GPU output was asked for (``--engine`` with ``--gpus``; either alone is refused)."""
    if args.engine is None and args.gpus is None:
        return False
    if args.engine is None:
        raise UsageError("--gpus needs --engine (ddp, zero1, zero2, zero3 or fsdp2).")
    if args.gpus is None:
        raise UsageError("--engine needs --gpus N (the number of GPUs of the run).")
    return True


def _per_gpu_output(args, estimate) -> str | dict:
    """The per-GPU tables (or JSON data) of ``estimate`` for each teacher placement ``--engine`` offers."""
    from ..memory.multi_gpu import per_gpu, valid_placements

    placements = [args.teacher_placement] if args.teacher_placement else valid_placements(args.engine)
    try:
        runs = [per_gpu(estimate, args.engine, args.gpus, placement) for placement in placements]
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.json:
        return {run.teacher_placement: run.estimate.to_dict(args.gpu) for run in runs}
    return "\n\n".join(f"== per GPU: {run.describe()}\n{run.estimate.table(args.gpu, fixes=False)}" for run in runs)


def plan_flag(f: Field) -> str:
    """The command-line flag of a :class:`TrainingPlan` field: ``--batch`` for ``per_device_batch_size``."""
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def add_plan_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :class:`TrainingPlan` field to ``parser`` (``dest`` is the field's name, default ``None``)."""
    from ..memory import TrainingPlan

    hints = typing.get_type_hints(TrainingPlan)
    groups = {name: parser.add_argument_group(name) for name in PLAN_GROUPS}
    for f in fields(TrainingPlan):
        meta = f.metadata
        if "help" not in meta or meta.get("group") not in groups:
            raise TypeError(f"TrainingPlan.{f.name} needs setting(...) metadata with a help text and a known group.")
        kwargs = dict(dest=f.name, default=None, help=meta["help"] + _shown_default(f.default))
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        kind = _value_type(hints[f.name], f.name)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if not meta.get("choices"):  # argparse shows the choices otherwise
                kwargs["metavar"] = meta.get("metavar") or plan_flag(f)[2:].replace("-", "_").upper()
            if kind is tuple:
                kwargs["nargs"] = "+"
            else:
                kwargs["type"] = kind
        groups[meta["group"]].add_argument(plan_flag(f), **kwargs)


def _shown_default(default) -> str:
    """`` (default X)`` for the help text; nothing for ``None``, whose meaning the field's help states."""
    if default is None or default is MISSING:
        return ""
    return f" (default {' '.join(default) if isinstance(default, tuple) else default})"


def _value_type(hint, name: str):
    """``bool``, ``int``, ``float``, ``str`` or ``tuple`` (of strings) from a field's annotation (``X | None`` → X)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:
        return tuple
    if hint in (bool, int, float, str):
        return hint
    raise TypeError(f"TrainingPlan.{name}: no command-line type for the annotation {hint!r}.")


def plan_overrides(args: argparse.Namespace) -> dict:
    """The :class:`TrainingPlan` fields the command line set (flags left out are not in it)."""
    from ..memory import TrainingPlan

    overrides = {}
    for f in fields(TrainingPlan):
        value = getattr(args, f.name, None)
        if value is not None:
            overrides[f.name] = tuple(value) if isinstance(value, list) else value
    return overrides


def run_plan(args: argparse.Namespace) -> int:
    from ..memory import RECIPES, ModelShape, TrainingPlan, packaged_configs, predict

    if args.list_recipes:
        for name, (student, teacher, plan) in RECIPES.items():
            print(f"{name:<18} student {student}, teacher {teacher}: {plan.describe()}")
        print("packaged shapes:", ", ".join(packaged_configs()))
        return 0
    if args.config:
        if args.recipe:
            raise UsageError("pass --config or --recipe, not both.")
        from ..pipeline.planning import plans_from_config, shape_name

        estimates = []
        for label, student, teacher, plan in plans_from_config(args.config):
            plan = replace(plan, **plan_overrides(args))
            student = args.student or shape_name(student, "model_name_or_path")
            teacher = args.teacher or shape_name(teacher, "teacher_model_name_or_path")
            estimates.append((label, predict(ModelShape.from_dir(student), ModelShape.from_dir(teacher), plan)))
        if _multi_gpu(args):
            outputs = {label: _per_gpu_output(args, e) for label, e in estimates}
            print(
                json.dumps(outputs, indent=2) if args.json else "\n\n".join(f"== {k}\n{v}" for k, v in outputs.items())
            )
            return 0
        if args.json:
            print(json.dumps({label: e.to_dict(args.gpu) for label, e in estimates}, indent=2))
        else:
            print("\n\n".join(f"== {label}\n{e.table(args.gpu)}" for label, e in estimates))
        return 0
    base = TrainingPlan()
    student = teacher = None
    if args.recipe:
        student, teacher, base = RECIPES[args.recipe]
    student = args.student or student
    teacher = args.teacher or teacher
    if getattr(args, "self_teacher", "none") != "none":
        teacher = teacher or student  # the student teaches itself
    missing = [flag for flag, value in (("--student", student), ("--teacher", teacher)) if value is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise UsageError(f"{' and '.join(missing)} {verb} required (or --recipe NAME).")
    plan = replace(base, **plan_overrides(args))
    estimate = predict(ModelShape.from_dir(student), ModelShape.from_dir(teacher), plan)
    if _multi_gpu(args):
        output = _per_gpu_output(args, estimate)
        print(json.dumps(output, indent=2) if args.json else output)
        return 0
    if args.json:
        print(json.dumps(estimate.to_dict(args.gpu), indent=2))
    else:
        print(estimate.table(args.gpu))
    return 0
