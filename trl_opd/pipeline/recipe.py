"""A pipeline recipe: a YAML file of defaults and ``stages:``, checked before anything trains.

```yaml
output_dir: runs/smollm2            # the pipeline's folder: one sub-folder per stage
max_steps: 40                       # the total optimizer-step budget
measure_start: true                 # also measure the student before stage 1 (the summary's "start" row)
keep_checkpoints: false             # (default) a finished stage keeps its model, not its checkpoint-N folders
model_name_or_path: student/        # every other top-level key is a default for every stage that has it
teacher_model_name_or_path: teacher/
dataset_name: reasoning_gym:chain_sum
stages:
  - {name: warmup, trainer: gkd, budget: 0.25, lmbda: 0.0}
  - {name: ramp, trainer: gkd, budget: 0.25, lmbda_schedule: linear, lmbda_start: 0.0, lmbda_end: 1.0}
  - {name: on_policy, trainer: gkd, budget: 0.25, lmbda: 1.0}
  - {name: polish, trainer: minillm, budget: 0.25, reward_funcs: ["reasoning_gym:chain_sum"]}
```

Stage ``i`` trains ``round(budget_i · max_steps)`` optimizer steps (the last stage takes the rest, so the stages add
up to ``max_steps`` exactly); a SPIN stage spreads its steps over its rounds (``max_steps // max_rounds`` DPO steps per
round). A top-level key applies to the stages whose trainer has it (``lmbda`` to GKD stages only; a hook to the trainers
that take it: ``curriculum`` to GKD) and must belong to at least one of them. The model keys
(``model_name_or_path``, ``use_peft``, ``lora_*``, quantization) are top-level only: every stage continues the same
model. Every mistake is refused naming the key and the fix (:func:`load_recipe`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .arguments import closest, read_yaml_mapping, unknown_key_message
from .commands import COMMANDS, EXTRA_YAML_KEYS, HOOKS, HOOKS_BY_TRAINER


#: Keys of a stage besides its trainer's fields.
STAGE_KEYS = ("name", "trainer", "budget")
#: Keys only the pipeline sets per stage, or only the top level may set.
PIPELINE_KEYS = ("output_dir", "max_steps", "stages", "measure_start", "keep_checkpoints")
#: Keys every stage must share (the model the stages continue), so they are top-level only.
MODEL_KEY_PATTERN = re.compile(
    r"^(model_name_or_path|model_revision|use_peft|lora_.*|use_rslora|use_dora|load_in_.*|bnb_.*|use_bnb_nested_quant|"
    r"dtype)$"
)
#: Keys naming local files or folders that must exist (a Hub id ``org/name`` is let through for the models).
PATH_KEYS = ("model_name_or_path", "teacher_model_name_or_path", "dataset_name", "teacher_cache")
BUDGET_TOLERANCE = 1e-6
#: Keys that mean something else in each trainer (docs/index.md, "Five meanings of beta"): stage keys only when the
#: recipe mixes the trainers that have them.
AMBIGUOUS_KEYS = {
    "beta": "GKD: the generalized JSD's interpolation; MiniLLM: GRPO's KL penalty, which must stay 0; SPIN: DPO's β",
    "loss_type": "MiniLLM: GRPO's loss aggregation; SPIN: the DPO loss (sigmoid or hinge)",
}


class RecipeError(ValueError):
    """A recipe mistake, printed as ``trl-opd pipeline: error: ...``."""


@dataclass
class Stage:
    """One stage: its trainer, its share of ``max_steps``, its optimizer steps and all its keys (merged)."""

    name: str
    trainer: str
    budget: float
    steps: int
    keys: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)


@dataclass
class Recipe:
    path: str
    output_dir: str
    max_steps: int
    stages: list[Stage]
    defaults: dict
    measure_start: bool = False
    keep_checkpoints: bool = False

    def stage_dir(self, stage: Stage) -> str:
        return os.path.join(self.output_dir, stage.name)

    def describe(self) -> str:
        lines = [f"{self.path}: {len(self.stages)} stages, {self.max_steps} optimizer steps, into {self.output_dir}/"]
        for i, stage in enumerate(self.stages, 1):
            own = stage.overrides
            head = f"  {i}. {stage.name:<12} {stage.trainer:<8} budget {stage.budget:<5g} {stage.steps:>4} steps  "
            lines.append(head + " ".join(f"{k}={v}" for k, v in own.items()))
        return "\n".join(lines)


def _looks_like_hub_id(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value)) and not value.startswith(".")


def check_paths(keys: dict, where: str) -> None:
    """Refuse a local path that does not exist (models may be Hub ids ``org/name``; datasets must be local)."""
    for key in PATH_KEYS:
        value = keys.get(key)
        if not isinstance(value, str) or value.startswith("reasoning_gym:") or value.startswith("smollm2:"):
            continue
        paths = value.split(",") if key == "dataset_name" else [value]
        for path in paths:
            if os.path.exists(path) or (key != "dataset_name" and _looks_like_hub_id(path)):
                continue
            fix = {"dataset_name": "a save_to_disk folder, a .json/.jsonl/.parquet file, or reasoning_gym:<task>"}
            raise RecipeError(f"{where}: {key} {path!r} does not exist; pass {fix.get(key, 'an existing folder')}.")


def _check_reward_funcs(keys: dict, where: str) -> None:
    import importlib

    for name in keys.get("reward_funcs") or []:
        if not isinstance(name, str) or name.startswith("reasoning_gym:"):
            continue
        module, sep, attr = name.partition(":")
        try:
            ok = bool(sep) and callable(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError, ValueError):
            ok = False
        if not ok:
            raise RecipeError(f"{where}: reward_funcs entry {name!r} cannot be imported; write pkg.module:function "
                              "(importable from here) or reasoning_gym:<task>.")  # fmt: skip


def load_recipe(source: str | os.PathLike | dict, output_dir: str | None = None) -> Recipe:
    """Read and check a recipe (a YAML path or a dict). ``output_dir`` overrides the recipe's.

    Raises:
        RecipeError: naming the key and the fix (unknown key, unknown trainer, budgets that do not sum to 1, a stage
            with no steps, a missing file, a model key in a stage, ...).
    """
    from .keys import command_fields

    if isinstance(source, dict):
        path, raw = "the recipe", dict(source)
    else:
        path = str(source)
        raw = read_yaml_mapping(
            path,
            "no such recipe file: pass the path of a YAML recipe (see recipes/).",
            "(top-level keys and `stages:`)",
            RecipeError,
        )
    stages_raw = raw.pop("stages", None)
    if not isinstance(stages_raw, list) or not stages_raw:
        raise RecipeError(f"{path}: `stages:` must be a non-empty list of {{name, trainer, budget, ...}} mappings.")
    output_dir = output_dir or raw.pop("output_dir", None)
    raw.pop("output_dir", None)
    if not output_dir:
        raise RecipeError(f"{path}: set output_dir: the pipeline's folder (one sub-folder per stage).")
    max_steps = raw.pop("max_steps", None)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise RecipeError(f"{path}: max_steps must be the total number of optimizer steps (an integer >= 1), "
                          f"got {max_steps!r}.")  # fmt: skip
    flags = {key: raw.pop(key, False) for key in ("measure_start", "keep_checkpoints")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise RecipeError(f"{path}: {key} must be true or false, got {value!r}.")
    for key in raw:
        if key == "env":
            raise RecipeError(f"{path}: env is not supported in a recipe; set the variables in the shell.")

    # The stages: name, trainer, budget, and keys of that trainer.
    names, trainers, budgets = [], [], []
    for i, stage in enumerate(stages_raw, 1):
        where = f"{path}, stage {i}"
        if not isinstance(stage, dict):
            raise RecipeError(f"{where}: a stage is a mapping {{name: ..., trainer: ..., budget: ...}}.")
        name = stage.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
            raise RecipeError(f"{where}: name must be a folder name (letters, digits, _ . -), got {name!r}.")
        if name in names:
            raise RecipeError(f"{where}: the name {name!r} is used twice; stage names must be unique.")
        where = f"{path}, stage {name!r}"
        trainer = stage.get("trainer")
        if trainer not in COMMANDS:
            guess = closest(str(trainer), COMMANDS)
            raise RecipeError(f"{where}: unknown trainer {trainer!r}; choose one of {', '.join(COMMANDS)}"
                              + (f" (did you mean {guess!r}?)" if guess else "") + ".")  # fmt: skip
        budget = stage.get("budget")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
            raise RecipeError(f"{where}: budget must be the stage's fraction of max_steps, in (0, 1], got {budget!r}.")
        names.append(name)
        trainers.append(trainer)
        budgets.append(float(budget))
    total = sum(budgets)
    if abs(total - 1.0) > BUDGET_TOLERANCE:
        shown = " + ".join(f"{b:g}" for b in budgets)
        raise RecipeError(f"{path}: the stage budgets sum to {total:g} ({shown}); make them sum to 1 (each is the "
                          "stage's fraction of max_steps).")  # fmt: skip

    # Top-level keys: each belongs to at least one of the trainers used.
    valid = {trainer: set(command_fields(trainer)) for trainer in set(trainers)}
    union = set().union(*valid.values())
    for key in raw:
        if key not in union:
            raise RecipeError(unknown_key_message(key, union | set(PIPELINE_KEYS), path)
                              + f" (keys of {', '.join(sorted(valid))})")  # fmt: skip
    for key, meanings in AMBIGUOUS_KEYS.items():
        having = sorted(trainer for trainer in valid if key in valid[trainer])
        if key in raw and len(having) > 1:
            raise RecipeError(f"{path}: {key} means something else in each of {', '.join(having)} ({meanings}); set it "
                              "in the stages that need it, not at the top level.")  # fmt: skip
    check_paths(raw, path)
    _check_reward_funcs(raw, path)

    steps = [max(0, round(b * max_steps)) for b in budgets[:-1]]
    steps.append(max_steps - sum(steps))
    stages = []
    for stage, name, trainer, budget, n in zip(stages_raw, names, trainers, budgets, steps, strict=True):
        where = f"{path}, stage {name!r}"
        if n < 1:
            raise RecipeError(f"{where}: budget {budget:g} of max_steps {max_steps} is {n} steps; raise the budget "
                              "or max_steps.")  # fmt: skip
        own = {k: v for k, v in stage.items() if k not in STAGE_KEYS}
        for key in own:
            if key in PIPELINE_KEYS:
                fix = "use budget" if key == "max_steps" else "the stage writes into output_dir/<name>"
                raise RecipeError(f"{where}: {key} cannot be set in a stage ({fix}).")
            if MODEL_KEY_PATTERN.match(key):
                raise RecipeError(f"{where}: {key} is a model key; set it at the top level (every stage continues "
                                  "the same model).")  # fmt: skip
            if key in HOOKS and key not in HOOKS_BY_TRAINER[trainer] and own[key] not in (None, False):
                raise RecipeError(f"{where}: {key} is not a hook of {trainer} (it takes "
                                  f"{', '.join(HOOKS_BY_TRAINER[trainer])}); remove it from this stage.")  # fmt: skip
            if key not in valid[trainer] and key not in EXTRA_YAML_KEYS:
                raise RecipeError(unknown_key_message(key, valid[trainer] | set(STAGE_KEYS), where)
                                  + f" ({trainer} keys)")  # fmt: skip
        check_paths(own, where)
        _check_reward_funcs(own, where)
        keys = {
            k: v for k, v in raw.items() if k in valid[trainer] and (k not in HOOKS or k in HOOKS_BY_TRAINER[trainer])
        }
        keys.update(own)
        keys["output_dir"] = os.path.join(output_dir, name)
        if trainer == "spin":
            rounds = keys.get("max_rounds", command_fields("spin")["max_rounds"]["default"])
            if n < rounds:
                raise RecipeError(f"{where}: {n} steps cannot be spread over max_rounds={rounds} SPIN rounds; lower "
                                  "max_rounds or raise the budget.")  # fmt: skip
            keys["max_steps"] = n // rounds
        else:
            keys["max_steps"] = n
        stages.append(Stage(name=name, trainer=trainer, budget=budget, steps=n, keys=keys, overrides=own))
    return Recipe(path=path, output_dir=str(output_dir), max_steps=max_steps, stages=stages, defaults=raw, **flags)
