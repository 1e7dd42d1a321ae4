"""The packaged recipes (``trl_opd/recipes``): ``trl-opd recipes`` lists them, the single-trainer ones parse and run
one step on tiny models, the 7B QLoRA one plans like the planner's recipe, and ``trl-opd demo`` says how long it takes
before it starts."""

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from cli_assets import write_assets

from trl_opd.cli import main
from trl_opd.cli import recipes as recipes_cli
from trl_opd.memory import RECIPES
from trl_opd.pipeline.planning import shape_name, training_plan


ROOT = Path(__file__).resolve().parents[1]
PATHS = recipes_cli.recipe_paths()
SINGLE = {name: recipes_cli.recipe_command(path) for name, path in PATHS.items()}
SINGLE = {name: command for name, command in SINGLE.items() if command != "pipeline"}
CPU_SINGLE = sorted(name for name in SINGLE if name.endswith("-cpu"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_assets(tmp_path_factory.mktemp("recipe_assets"))


def test_the_recipes_ship_inside_the_package():
    assert recipes_cli.recipes_dir() == ROOT / "trl_opd" / "recipes"
    assert (ROOT / "recipes").resolve() == recipes_cli.recipes_dir()  # the checkout's recipes/ is the same folder
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    package_data = next(line for line in lines if line.startswith("trl_opd = ["))
    assert "recipes/*.yaml" in package_data
    assert sorted(SINGLE.values()) == ["gkd", "gkd", "gkd", "gkd", "minillm", "spin"]


def test_listing_names_every_recipe_and_its_command(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name, path in PATHS.items():
        command = SINGLE.get(name, "pipeline")
        run = f'trl-opd {command} --config "$(trl-opd recipes --path {name})"'
        assert (run if command != "pipeline" else f'trl-opd pipeline "$(trl-opd recipes --path {name})"') in out
        assert recipes_cli.recipe_summary(path) in out and recipes_cli.recipe_summary(path)
    assert main(["recipes", "gkd-smollm2-cpu"]) == 0
    assert capsys.readouterr().out == PATHS["gkd-smollm2-cpu"].read_text()
    assert main(["recipes", "--path", "spin-smollm2-cpu.yaml"]) == 0
    assert capsys.readouterr().out.strip() == str(PATHS["spin-smollm2-cpu"])
    assert main(["recipes", "gdk"]) == 2
    assert "no packaged recipe 'gdk'; `trl-opd recipes` lists them" in capsys.readouterr().err


def test_a_recipe_without_stages_must_be_named_after_its_trainer(tmp_path):
    path = tmp_path / "distil.yaml"
    path.write_text("lmbda: 1.0\n")
    with pytest.raises(Exception, match=r"must be named after its trainer"):
        recipes_cli.recipe_command(path)


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_single_trainer_recipes_parse(name):
    from trl_opd.pipeline.arguments import parse_run

    cpu = [] if name.endswith("-cpu") else ["--bf16", "false", "--use_cpu", "true"]  # the GPU recipe, parsed on CPU
    run = parse_run(SINGLE[name], argv=["--config", str(PATHS[name]), *cpu])
    keys = yaml.safe_load(PATHS[name].read_text())
    assert run.training.output_dir == keys["output_dir"] and run.training.max_steps == keys["max_steps"]
    assert (
        run.model.model_name_or_path == keys["model_name_or_path"] and run.teacher == keys["teacher_model_name_or_path"]
    )
    assert run.script.dataset_name == keys["dataset_name"] and run.given


def test_the_7b_qlora_recipe_plans_like_the_planners_recipe(capsys):
    keys = yaml.safe_load(PATHS["gkd-7b-qlora"].read_text())
    student, teacher, plan = training_plan("gkd", keys)
    assert (shape_name(student, "student"), shape_name(teacher, "teacher"), plan) == RECIPES["7b-nf4-7b-bf16"]
    assert main(["plan", "--config", str(PATHS["gkd-7b-qlora"])]) == 0
    assert "24 GB: fits" in capsys.readouterr().out


def test_the_7b_qlora_vllm_recipe_plans_the_same_run_plus_vllms_share(capsys):
    keys = yaml.safe_load(PATHS["gkd-7b-qlora-vllm"].read_text())
    base = yaml.safe_load(PATHS["gkd-7b-qlora"].read_text())
    vllm_keys = {"use_vllm", "vllm_mode", "vllm_gpu_memory_utilization", "vllm_max_model_length", "vllm_dtype"}
    assert {k: v for k, v in keys.items() if k not in vllm_keys | {"output_dir"}} == {
        k: v for k, v in base.items() if k != "output_dir"
    }
    assert keys["use_vllm"] is True and keys["vllm_mode"] == "colocate"
    assert keys["vllm_max_model_length"] == keys["max_prompt_length"] + keys["max_completion_length"]
    plan = training_plan("gkd", keys)[2]
    share = keys["vllm_gpu_memory_utilization"]
    assert plan == replace(training_plan("gkd", base)[2], generation_backend="vllm", vllm_gpu_memory_utilization=share)
    assert main(["plan", "--config", str(PATHS["gkd-7b-qlora-vllm"])]) == 0
    out = capsys.readouterr().out
    assert f"vLLM colocated ({share:.2f})" in out and f"every phase: {share:g} × card" in out
    assert "24 GB: does not fit" in out and "40 GB: fits" in out  # the base recipe fits 24 GB (test above)


@pytest.mark.parametrize("name", CPU_SINGLE)
def test_cpu_recipes_train_one_step_on_tiny_models(name, assets, tmp_path):
    """The recipe's own keys (data, verifier, hooks, LoRA, ...) with the tiny models and one step instead."""
    out = tmp_path / name
    flags = ["--model_name_or_path", assets["student"], "--teacher_model_name_or_path", assets["teacher"],
             "--output_dir", str(out), "--max_steps", "1", "--dataset_train_size", "8", "--dataset_test_size", "2",
             "--eval_num_samples", "1", "--max_completion_length", "4"]  # fmt: skip
    if SINGLE[name] == "spin":
        flags += ["--max_rounds", "1", "--num_saturation_samples", "2"]
    assert main([SINGLE[name], "--config", str(PATHS[name]), *flags]) == 0
    assert (out / "README.md").exists() and "products_accuracy_greedy" in (out / "README.md").read_text()


def test_demo_prints_its_expected_time_before_it_trains(monkeypatch, capsys, tmp_path):
    import trl_opd.pipeline.runner as runner

    started = []

    def fake_run_pipeline(recipe):
        started.append((recipe, capsys.readouterr().out))
        return []

    monkeypatch.setattr(runner, "run_pipeline", fake_run_pipeline)
    assert main(["demo", "--output_dir", str(tmp_path / "demo")]) == 0
    (recipe, printed_before), = started  # fmt: skip
    assert recipe.output_dir == str(tmp_path / "demo") and [s.trainer for s in recipe.stages] == ["gkd"]
    assert recipe.measure_start and recipe.stages[0].keys["lmbda"] == 1.0
    from trl_opd.cli.demo import MEASURED_SECONDS

    assert f"Expected time: about {MEASURED_SECONDS // 60} minutes on 2 idle CPU cores" in printed_before
    assert f"measured {MEASURED_SECONDS} s" in " ".join((ROOT / "README.md").read_text().split())  # the same number
