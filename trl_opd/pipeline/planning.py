"""``trl-opd plan --config recipe.yaml``: a training YAML (or a pipeline recipe's stages) as a memory plan.

The one place where the training keys map onto :class:`trl_opd.memory.TrainingPlan` (a key not given takes the
trainer's default, from the committed field list):

* ``student_quant``: ``load_in_4bit`` → ``nf4`` (``bnb_4bit_quant_type``), ``load_in_8bit`` → ``int8``, else
  ``dtype`` (default bf16);
* ``teacher_quant``: ``teacher_model_init_kwargs``: a 4-bit / 8-bit ``quantization_config`` or a ``dtype``; else the
  student's dtype;
* ``double_quant``: ``use_bnb_nested_quant``;
* ``lora_rank``, ``lora_targets``, ``lora_dropout``: ``lora_r`` (0 without ``use_peft``), ``lora_target_modules``
  (``all-linear`` = every linear layer), ``lora_dropout``;
* ``per_device_batch_size``, ``gradient_accumulation_steps``: ``per_device_train_batch_size``, the same name;
* ``prompt_length``, ``completion_length``: ``max_prompt_length`` (512 when unset), ``max_completion_length``
  (GKDConfig's ``max_new_tokens`` when it is unset);
* ``gradient_checkpointing``: the same name; ``optimizer``: ``optim`` with ``8bit`` in it → ``adamw_8bit``;
* ``divergence``: ``divergence`` (GKD); ``rkl`` for MiniLLM (planned as on-policy GKD with RKL);
* ``generation_backend``, ``vllm_gpu_memory_utilization``: ``use_vllm`` + ``vllm_mode`` (colocate → vllm, server →
  vllm-server);
* ``teacher_source``, ``teacher_top_k``: ``teacher_cache`` (λ ≡ 0 → cache, else
  cache+live; ``LambdaSchedule.always_off_policy``), ``teacher_top_k``;
* ``self_teacher``: ``privileged_teacher`` (the teacher's shape is then the student's).

The shapes come from ``model_name_or_path`` / ``teacher_model_name_or_path``: a folder with a ``config.json``, a
packaged model (``smollm2:student``), or a Hub id whose name is a packaged shape (``Qwen/Qwen2.5-7B-Instruct`` →
``qwen2.5-7b``). SPIN stages are not planned (the planner models distillation, not DPO); the run says so.
"""

from __future__ import annotations

import os

from ..schedules import CONFIG_FIELDS, LambdaSchedule


DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "float32": "fp32", "fp32": "fp32"}


def shape_name(value: str | None, role: str) -> str:
    """A folder or packaged shape for :meth:`ModelShape.from_dir`."""
    from ..memory import packaged_configs

    if not value:
        flag = "--teacher" if "teacher" in role else "--student"
        raise ValueError(f"the config has no {role}; set it or pass {flag} DIR.")
    if value.startswith("smollm2:"):
        from ..assets import asset_model_dir

        return str(asset_model_dir(value))
    if os.path.isdir(value):
        return value
    name = value.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix in ("-instruct", "-chat", "-base"):
        name = name.removesuffix(suffix)
    if name in packaged_configs():
        return name
    raise ValueError(f"{role} {value!r} is no folder and no packaged shape ({', '.join(packaged_configs())}); pass "
                     "--student/--teacher with a folder holding its config.json.")  # fmt: skip


def _quant(dtype, default: str = "bf16") -> str:
    return DTYPES.get(str(dtype).lower(), default) if dtype not in (None, "auto") else default


def training_plan(trainer: str, keys: dict):
    """``(student, teacher, TrainingPlan)`` of one run's keys (see the module docstring)."""
    from ..memory import LORA_TARGETS, TrainingPlan
    from .keys import command_fields

    defaults = command_fields(trainer)

    def get(key):
        return keys[key] if key in keys else defaults[key]["default"]

    if get("load_in_4bit"):
        student_quant = "nf4"
    elif get("load_in_8bit"):
        student_quant = "int8"
    else:
        student_quant = _quant(get("dtype"))
    teacher_kwargs = keys.get("teacher_model_init_kwargs") or {}
    quantization = teacher_kwargs.get("quantization_config") or {}
    if quantization.get("load_in_4bit"):
        teacher_quant = "nf4"
    elif quantization.get("load_in_8bit"):
        teacher_quant = "int8"
    else:
        teacher_quant = _quant(teacher_kwargs.get("dtype"), _quant(get("dtype")))
    targets = get("lora_target_modules")
    targets = ("q_proj", "v_proj") if targets is None else (targets,) if isinstance(targets, str) else tuple(targets)
    if targets == ("all-linear",):
        targets = LORA_TARGETS
    vllm = "hf"
    if get("use_vllm"):
        vllm = "vllm-server" if get("vllm_mode") == "server" else "vllm"
    cache = keys.get("teacher_cache")
    off_policy = (
        trainer == "gkd"
        and LambdaSchedule.from_config({name: get(name) for name in CONFIG_FIELDS.values()}).always_off_policy
    )
    plan = TrainingPlan(
        student_quant=student_quant,
        teacher_quant=teacher_quant,
        double_quant=bool(get("use_bnb_nested_quant")),
        lora_rank=int(get("lora_r")) if get("use_peft") else 0,
        lora_targets=targets,
        lora_dropout=float(get("lora_dropout")) if get("use_peft") else 0.0,
        per_device_batch_size=int(get("per_device_train_batch_size")),
        gradient_accumulation_steps=int(get("gradient_accumulation_steps")),
        prompt_length=int(keys.get("max_prompt_length") or 512),
        completion_length=int(get("max_completion_length") or get("max_new_tokens")),  # GKDConfig: either names it
        gradient_checkpointing=bool(get("gradient_checkpointing")),
        optimizer="adamw_8bit" if "8bit" in str(get("optim")) else "adamw",
        divergence="rkl" if trainer == "minillm" else get("divergence"),
        generation_backend=vllm,
        vllm_gpu_memory_utilization=float(get("vllm_gpu_memory_utilization")),
        teacher_source=("cache" if off_policy else "cache+live") if cache else "live",
        teacher_top_k=keys.get("teacher_top_k"),
        self_teacher=keys.get("privileged_teacher") or "none",
    )
    teacher = keys.get("teacher_model_name_or_path")
    if plan.self_teacher != "none":
        teacher = keys.get("model_name_or_path")  # the student is its own teacher
    return keys.get("model_name_or_path"), teacher, plan


def plans_from_config(path: str) -> list[tuple[str, str | None, str | None, object]]:
    """``[(label, student, teacher, TrainingPlan), ...]``: one per pipeline stage (SPIN stages left out), or one for
    a ``trl-opd gkd|minillm`` YAML (trainer ``gkd`` unless it has MiniLLM-only keys)."""
    from .arguments import check_keys, read_yaml_mapping
    from .keys import command_fields
    from .recipe import load_recipe
    from .values import check_values

    raw = read_yaml_mapping(
        path, "no such file; pass --config the path of a recipe (`trl-opd recipes` lists them).", "of keys to values"
    )
    if "stages" in raw:
        recipe = load_recipe(path)
        out = []
        for stage in recipe.stages:
            if stage.trainer in ("spin", "grpo"):
                print(f"stage {stage.name}: {stage.trainer} is not planned (the planner models distillation runs).")
                continue
            check_values(stage.trainer, stage.keys, f"{path}, stage {stage.name!r}")
            out.append((f"stage {stage.name} ({stage.trainer})", *training_plan(stage.trainer, stage.keys)))
        return out
    gkd_keys = set(command_fields("gkd"))
    trainer = "gkd" if set(raw) - {"env"} <= gkd_keys else "minillm"
    check_keys(trainer, raw, path)
    check_values(trainer, raw, path)
    return [(f"{path} ({trainer})", *training_plan(trainer, raw))]
