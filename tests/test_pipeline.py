"""``trl-opd pipeline``: stages chained on one adapter, summary files, resume after a kill, refused recipes."""

import json

import pytest
import torch
import yaml
from cli_assets import write_assets
from safetensors.torch import load_file
from transformers import TrainerCallback

from trl_opd.cli import main
from trl_opd.pipeline import RecipeError, load_recipe, run_pipeline


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_assets(tmp_path_factory.mktemp("pipeline_assets"))


def recipe(assets, output_dir, **overrides):
    keys = dict(
        output_dir=str(output_dir),
        max_steps=6,
        model_name_or_path=assets["student"],
        teacher_model_name_or_path=assets["teacher"],
        dataset_name=assets["data"],
        dataset_test_size=4,
        per_device_train_batch_size=4,
        max_completion_length=3,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=1,
        reward_funcs=["cli_assets:addition_accuracy"],
        eval_num_samples=1,
        use_peft=True,
        lora_r=4,
        lora_target_modules=["q_proj", "v_proj"],
        num_generations=2,
        seed=0,
        stages=[
            {"name": "offline", "trainer": "gkd", "budget": 0.34, "lmbda": 0.0},
            {"name": "online", "trainer": "gkd", "budget": 0.33, "lmbda": 1.0},
            {"name": "polish", "trainer": "minillm", "budget": 0.33},
        ],
    )
    keys.update(overrides)
    if not any(stage["trainer"] == "minillm" for stage in keys["stages"]):
        del keys["num_generations"]  # a MiniLLM key: refused when no stage is MiniLLM
    return keys


class FirstLoraWeight(TrainerCallback):
    """Records, per stage folder, a LoRA weight of the model as training begins."""

    def __init__(self):
        self.seen = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        name, value = next((n, p) for n, p in model.named_parameters() if "lora_B" in n)
        self.seen[args.output_dir] = (name, value.detach().clone())


class KillAfterCheckpoint(TrainerCallback):
    """Raises right after ``checkpoint-1`` of the stage folder ending in ``stage`` is written (a killed run)."""

    def __init__(self, stage):
        self.stage = stage

    def on_save(self, args, state, control, **kwargs):
        if args.output_dir.endswith(self.stage):
            raise RuntimeError("killed")


def test_three_stages_chain_one_adapter_and_write_the_summary(assets, tmp_path, capsys):
    out = tmp_path / "run"
    seen = FirstLoraWeight()
    keys = recipe(assets, out, measure_start=True, curriculum={})  # the curriculum: a default of the GKD stages only
    entries = run_pipeline(keys, callbacks=[seen])
    assert [e["name"] for e in entries] == ["start", "offline", "online", "polish"]
    assert [e["steps"] for e in entries] == [0, 2, 2, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary] == ["start", "offline", "online", "polish"]
    assert "student_eos_rate" in summary[0]["metrics"]
    for entry in summary[1:]:
        assert {"name", "trainer", "steps", "metrics", "seconds"} <= set(entry)
        for key in ("fkl_on_teacher_samples", "rkl_on_student_samples", "student_eos_rate", "student_distinct_2",
                    "addition_accuracy_greedy", "addition_accuracy_sampled"):  # fmt: skip
            assert key in entry["metrics"]
        assert (out / entry["name"] / "adapter_config.json").exists()
        assert "trl-opd" in (out / entry["name"] / "README.md").read_text()
    assert "| polish | minillm | 2 |" in (out / "summary.md").read_text()
    assert "curriculum" in (out / "online" / "README.md").read_text()
    assert "curriculum" not in (out / "polish" / "README.md").read_text()
    assert not list(out.glob("*/checkpoint-*"))  # a finished stage keeps its model, not its checkpoints
    assert "| online | gkd | 2 |" in capsys.readouterr().out
    # Each later stage starts from the adapter the previous stage saved (LoRA B is zero at a fresh start).
    for previous, stage in (("offline", "online"), ("online", "polish")):
        name, start = seen.seen[str(out / stage)]
        saved = load_file(str(out / previous / "adapter_model.safetensors"))
        key = next(k for k in saved if k.endswith(name.split("base_model.model.", 1)[-1].replace(".default", "")))
        assert start.abs().sum() > 0 and torch.equal(start, saved[key])


def test_a_killed_pipeline_resumes_where_it_stopped(assets, tmp_path):
    stages = [{**stage, "budget": 0.5} for stage in recipe(assets, "")["stages"][:2]]  # gkd λ=0, then gkd λ=1
    keys = recipe(assets, tmp_path / "run", max_steps=4, stages=stages)
    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(keys, callbacks=[KillAfterCheckpoint("online")])
    assert (tmp_path / "run" / "offline" / "stage.json").exists()
    assert not (tmp_path / "run" / "online" / "stage.json").exists()
    assert (tmp_path / "run" / "online" / "checkpoint-1").is_dir()
    first_stage_mtime = (tmp_path / "run" / "offline" / "adapter_model.safetensors").stat().st_mtime_ns
    (tmp_path / "run" / "online" / "checkpoint-2").mkdir()  # a kill while checkpoint-2 was written: skipped
    entries = run_pipeline(keys)  # the same command again
    assert (tmp_path / "run" / "offline" / "adapter_model.safetensors").stat().st_mtime_ns == first_stage_mtime
    assert entries[1]["resumed_from"].endswith("checkpoint-1") and entries[1]["steps"] == 2
    # The resumed stage ends where an uninterrupted run ends.
    straight = run_pipeline({**keys, "measure_start": True}, output_dir=str(tmp_path / "straight"))  # same training
    resumed = load_file(str(tmp_path / "run" / "online" / "adapter_model.safetensors"))
    expected = load_file(str(tmp_path / "straight" / "online" / "adapter_model.safetensors"))
    assert straight[0]["name"] == "start" and straight[2]["resumed_from"] is None
    assert all(torch.allclose(resumed[k], expected[k], atol=1e-6) for k in expected)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lmdba": 0.5}, "unknown key 'lmdba' in the recipe; did you mean 'lmbda'?"),
        ({"stages": [{"name": "a", "trainer": "gdk", "budget": 1.0}]}, "unknown trainer 'gdk'; choose one of gkd, "),
        (
            {
                "stages": [
                    {"name": "a", "trainer": "gkd", "budget": 0.5},
                    {"name": "b", "trainer": "gkd", "budget": 0.4},
                ]
            },
            "the stage budgets sum to 0.9 (0.5 + 0.4); make them sum to 1",
        ),
        ({"dataset_name": "/no/such/data.jsonl"}, "dataset_name '/no/such/data.jsonl' does not exist; pass a "),
        ({"model_name_or_path": "./no_such_student"}, "model_name_or_path './no_such_student' does not exist"),
        ({"stages": [{"name": "a", "trainer": "gkd", "budget": 1.0, "lora_r": 8}]}, "lora_r is a model key; set it "),
        ({"stages": [{"name": "a", "trainer": "gkd", "budget": 1.0, "max_steps": 3}]}, "(use budget)"),
        ({"stages": [{"name": "a", "trainer": "gkd", "budget": 1.0, "num_generation": 2}]}, "stage 'a'; did you mean"),
        ({"extrapolation_lambda": 1.5, "stages": [{"name": "a", "trainer": "gkd", "budget": 1.0}]}, "(keys of gkd)"),
        ({"max_steps": 2}, "budget 0.33 of max_steps 2 is 1 steps"),
        ({"beta": 0.5}, "beta means something else in each of gkd, minillm (GKD: the generalized JSD"),
        ({"stages": [{"name": "a", "trainer": "minillm", "budget": 1.0, "curriculum": {}}]}, "not a hook of minillm"),
    ],
)
def test_bad_recipes_are_refused_naming_the_key_and_the_fix(assets, tmp_path, change, message):
    keys = recipe(assets, tmp_path / "run", **change)
    if message.startswith("budget 0.33"):
        keys["max_steps"], message = 2, "budget 0.33 of max_steps 2 is 0 steps; raise the budget or max_steps"
    with pytest.raises(RecipeError) as error:
        load_recipe(keys)
    assert message in str(error.value)


def test_the_command_refuses_a_missing_recipe_and_a_bad_one(assets, tmp_path, capsys):
    assert main(["pipeline", str(tmp_path / "none.yaml")]) == 2
    assert "no such recipe file" in capsys.readouterr().err
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe(assets, tmp_path / "run", lmdba=0.5)))
    assert main(["pipeline", str(path), "--check"]) == 2
    assert "did you mean 'lmbda'?" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(recipe(assets, tmp_path / "run")))
    assert main(["pipeline", str(path), "--check"]) == 0
    assert "polish       minillm" in capsys.readouterr().out
