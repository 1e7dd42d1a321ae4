"""The shipped recipes load, and ``trl-opd plan --config`` plans them like the planner's named recipes."""

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from trl_opd.cli import main
from trl_opd.memory import RECIPES
from trl_opd.pipeline.planning import shape_name, training_plan
from trl_opd.pipeline.recipe import load_recipe


RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
GPU_RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("7b-*.yaml") if not p.stem.endswith("-vllm"))
VLLM_RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("7b-*-vllm.yaml"))
VLLM_KEYS = {"use_vllm", "vllm_mode", "vllm_gpu_memory_utilization", "vllm_max_model_length", "vllm_dtype"}


def test_every_pipeline_recipe_loads():
    assert GPU_RECIPES and (RECIPES_DIR / "smollm2-cpu.yaml").exists()
    for path in RECIPES_DIR.glob("*.yaml"):
        if "stages" not in yaml.safe_load(path.read_text()):
            continue  # a single-trainer recipe (tests/test_packaged_recipes.py)
        recipe = load_recipe(path)
        assert sum(stage.steps for stage in recipe.stages) == recipe.max_steps
        staged = {"demo-smollm2-cpu": ["gkd"], "opsd-smollm2-cpu": ["gkd", "gkd", "grpo", "gkd"]}
        staged = staged.get(path.stem, ["gkd", "gkd", "gkd", "minillm"])
        assert [stage.trainer for stage in recipe.stages] == staged


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_gpu_recipes_are_the_planners_recipes(name):
    assert name in RECIPES, f"recipes/{name}.yaml is named after no planner recipe ({', '.join(RECIPES)})"
    student, teacher, plan = RECIPES[name]
    recipe = load_recipe(RECIPES_DIR / f"{name}.yaml")
    for stage in recipe.stages:
        if stage.trainer == "gkd":
            s, t, stage_plan = training_plan(stage.trainer, stage.keys)
            assert (shape_name(s, "student"), shape_name(t, "teacher"), stage_plan) == (student, teacher, plan)


@pytest.mark.parametrize("name", VLLM_RECIPES)
def test_vllm_recipes_plan_their_base_recipe_plus_vllms_share(name, capsys):
    """``NAME-vllm.yaml`` is ``NAME.yaml`` with colocated vLLM rollouts: each stage plans as the base recipe's with the
    vLLM backend and its share of the card, and ``trl-opd plan --config`` reports that share."""
    base_name = name.removesuffix("-vllm")
    keys, base = (yaml.safe_load((RECIPES_DIR / f"{n}.yaml").read_text()) for n in (name, base_name))
    assert {k: v for k, v in keys.items() if k not in VLLM_KEYS | {"output_dir"}} == {
        k: v for k, v in base.items() if k != "output_dir"
    }
    assert keys["use_vllm"] is True and keys["vllm_mode"] == "colocate"
    assert keys["vllm_max_model_length"] == keys["max_prompt_length"] + keys["max_completion_length"]
    share = keys["vllm_gpu_memory_utilization"]
    recipe, base_recipe = load_recipe(RECIPES_DIR / f"{name}.yaml"), load_recipe(RECIPES_DIR / f"{base_name}.yaml")
    for stage, base_stage in zip(recipe.stages, base_recipe.stages, strict=True):
        plan = training_plan(stage.trainer, stage.keys)[2]
        expected = training_plan(base_stage.trainer, base_stage.keys)[2]
        assert plan == replace(expected, generation_backend="vllm", vllm_gpu_memory_utilization=share), stage.name
    assert main(["plan", "--config", str(RECIPES_DIR / f"{name}.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count(f"vLLM colocated ({share:.2f})") == len(recipe.stages)
    assert out.count(f"every phase: {share:g} × card") == len(recipe.stages)


def test_plan_reads_the_recipe_and_flags_override_it(capsys):
    name = "7b-nf4-14b-bf16"
    assert main(["plan", "--recipe", name]) == 0
    named = capsys.readouterr().out
    assert main(["plan", "--config", str(RECIPES_DIR / f"{name}.yaml")]) == 0
    planned = capsys.readouterr().out
    assert "== stage on_policy (gkd)" in planned and "== stage polish (minillm)" in planned
    total = next(line for line in named.splitlines() if line.startswith("predicted total"))
    assert planned.count(total) == 4
    assert main(["plan", "--config", str(RECIPES_DIR / f"{name}.yaml"), "--teacher-quant", "nf4"]) == 0
    assert total not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("lmbda_keys", "source"),
    [
        ({"lmbda": 0.0}, "cache"),
        ({"lmbda_schedule": "linear", "lmbda_start": 0.0, "lmbda_end": 0.0}, "cache"),  # λ ≡ 0 as a schedule
        ({"lmbda_schedule": "linear", "lmbda_start": 0.0, "lmbda_end": 0.5}, "cache+live"),
        ({"lmbda": 0.5}, "cache+live"),
    ],
)
def test_a_cache_stage_is_planned_without_a_teacher_exactly_when_lambda_stays_zero(lmbda_keys, source):
    keys = {"teacher_cache": "cache-dir", "teacher_top_k": 8, **lmbda_keys}
    assert training_plan("gkd", keys)[2].teacher_source == source
