"""``trl-opd plan --engine E --gpus N``: per-GPU memory of a sharded run for each teacher placement
(:mod:`trl_opd.memory.multi_gpu`)."""

import json

import pytest

from trl_opd.cli import main as cli_main
from trl_opd.memory import TrainingPlan, predict
from trl_opd.memory.multi_gpu import head_gather_bytes, layer_bytes, per_gpu
from trl_opd.memory.shapes import ModelShape


GIB = 2**30
FULL_7B_WITH_32B = ["plan", "--student", "qwen2.5-7b", "--teacher", "qwen2.5-32b", "--lora-rank", "0", "--json"]


def per_gpu_json(capsys, *flags) -> dict:
    assert cli_main([*FULL_7B_WITH_32B, *flags, "--gpu", "40", "80"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("gpus", [4, 8])
def test_plan_reports_per_gpu_memory_of_a_sharded_7b_student_with_a_32b_teacher(capsys, gpus):
    one_gpu = predict("qwen2.5-7b", "qwen2.5-32b", TrainingPlan(lora_rank=0))
    fsdp2 = per_gpu_json(capsys, "--engine", "fsdp2", "--gpus", str(gpus))
    zero3 = per_gpu_json(capsys, "--engine", "zero3", "--gpus", str(gpus))
    assert set(fsdp2) == {"sharded", "replica"} and set(zero3) == {"sharded"}  # ZeRO-3 always partitions it
    sharded, replica = fsdp2["sharded"]["parts_bytes"], fsdp2["replica"]["parts_bytes"]
    # The student's weights, gradients and optimizer states and a sharded teacher are split over the GPUs.
    for part in ("student_weights", "gradients", "optimizer_states"):
        assert sharded[part] == pytest.approx(one_gpu.parts[part] / gpus)
    assert sharded["teacher_weights"] == pytest.approx(one_gpu.parts["teacher_weights"] / gpus)
    assert replica["teacher_weights"] == pytest.approx(one_gpu.parts["teacher_weights"])
    # What a sharded model materializes: both full heads during the loss, two decoder layers of the larger model.
    student, teacher = ModelShape.from_dir("qwen2.5-7b"), ModelShape.from_dir("qwen2.5-32b")
    assert sharded["gathered_heads"] == head_gather_bytes(152064, 3584, 2) + head_gather_bytes(152064, 5120, 2)
    assert sharded["gathered_layers"] == pytest.approx(2 * layer_bytes(teacher, "bf16"))
    assert replica["gathered_heads"] == head_gather_bytes(152064, 3584, 2)
    assert layer_bytes(teacher, "bf16") > layer_bytes(student, "bf16")
    assert zero3["sharded"]["total_bytes"] == pytest.approx(fsdp2["sharded"]["total_bytes"])
    total = {placement: fsdp2[placement]["total_bytes"]["80.0"] / GIB for placement in fsdp2}
    # The one-GPU run needs ~128 GiB; sharded over 4 or 8 GPUs it fits 80 GB cards, and 8 GPUs need less than 4.
    assert one_gpu.total_gib() > 120
    assert fsdp2["sharded"]["fits"]["80.0"] and total["sharded"] < total["replica"] - 40
    assert total["sharded"] < (42 if gpus == 4 else 26)


def test_a_replicated_32b_teacher_does_not_fit_80_gb_on_4_gpus_but_a_sharded_one_does(capsys):
    fsdp2 = per_gpu_json(capsys, "--engine", "fsdp2", "--gpus", "4")
    assert not fsdp2["replica"]["fits"]["80.0"] and fsdp2["sharded"]["fits"]["80.0"]


def test_ddp_and_zero2_keep_the_student_weights_whole(capsys):
    one_gpu = predict("qwen2.5-7b", "qwen2.5-32b", TrainingPlan(lora_rank=0))
    ddp = per_gpu_json(capsys, "--engine", "ddp", "--gpus", "4")["replica"]["parts_bytes"]
    zero2 = per_gpu_json(capsys, "--engine", "zero2", "--gpus", "4")["replica"]["parts_bytes"]
    assert ddp["optimizer_states"] == pytest.approx(one_gpu.parts["optimizer_states"])
    assert zero2["optimizer_states"] == pytest.approx(one_gpu.parts["optimizer_states"] / 4)
    assert zero2["student_weights"] == ddp["student_weights"] == pytest.approx(one_gpu.parts["student_weights"])
    assert ddp["gathered_layers"] == ddp["gathered_heads"] == 0


def test_the_table_names_each_placement(capsys):
    assert cli_main(["plan", "--recipe", "7b-nf4-32b-bf16", "--engine", "fsdp2", "--gpus", "8", "--gpu", "80"]) == 0
    out = capsys.readouterr().out
    assert "== per GPU: fsdp2 on 8 GPUs, teacher sharded" in out and "teacher replica" in out
    assert "gathered heads" in out and "80 GB: fits" in out


def test_multi_gpu_flags_are_checked(capsys):
    assert cli_main([*FULL_7B_WITH_32B, "--engine", "zero2", "--gpus", "4", "--teacher-placement", "sharded"]) == 2
    assert "a sharded teacher needs zero3 or fsdp2" in capsys.readouterr().err
    assert cli_main([*FULL_7B_WITH_32B, "--engine", "zero3"]) == 2
    assert "--engine needs --gpus" in capsys.readouterr().err
    assert cli_main([*FULL_7B_WITH_32B, "--gpus", "4"]) == 2
    assert "--gpus needs --engine" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 1 GPU"):
        per_gpu(predict("qwen2.5-7b", "qwen2.5-32b"), "zero3", 0)


def test_the_sharded_recipe_plans_per_gpu_and_its_accelerate_configs_ship(capsys):
    from pathlib import Path

    import yaml

    from trl_opd.cli.recipes import recipe_paths, recipes_dir

    recipe = recipe_paths()["gkd-7b-32b-sharded"]
    assert yaml.safe_load(recipe.read_text())["teacher_placement"] == "sharded"
    assert cli_main(["plan", "--config", str(recipe), "--engine", "zero3", "--gpus", "8", "--gpu", "80", "--json"]) == 0
    (per_gpu_run,) = json.loads(capsys.readouterr().out).values()
    assert per_gpu_run["sharded"]["fits"]["80.0"] and per_gpu_run["sharded"]["plan"]["teacher_top_k"] == 64
    configs = {path.stem: yaml.safe_load(path.read_text()) for path in (recipes_dir() / "accelerate").glob("*.yaml")}
    assert configs["zero3-8gpu"]["deepspeed_config"]["zero_stage"] == 3
    assert configs["fsdp2-8gpu"]["fsdp_config"]["fsdp_version"] == 2
    assert all(c["num_processes"] == 8 and c["mixed_precision"] == "bf16" for c in configs.values())
    package_data = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"recipes/accelerate/*.yaml"' in package_data
