"""Issue 22: the pipeline and the training commands never write outside their folders, never mix two runs, and
refuse a recipe that would fail later, before anything trains."""

import json

import pytest
import torch
import yaml
from cli_assets import write_assets
from safetensors.torch import load_file
from test_pipeline import KillAfterCheckpoint, recipe

from trl_opd.cli import main
from trl_opd.ownership import OwnershipError
from trl_opd.pipeline import RecipeError, load_recipe, run_pipeline


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_assets(tmp_path_factory.mktemp("trust_assets"))


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "-x", "summary.json", "a/b", "a" * 256])
def test_a_stage_name_cannot_leave_the_pipeline_folder(assets, tmp_path, name, capsys):
    keys = recipe(assets, tmp_path / "run", stages=[{"name": name, "trainer": "gkd", "budget": 1.0}])
    with pytest.raises(RecipeError, match="name must be a folder name inside output_dir"):
        load_recipe(keys)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(keys))
    assert main(["pipeline", str(path), "--check"]) == 2
    assert "name must be a folder name inside output_dir" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ trl-opd gkd: output_dir


def gkd_yaml(assets, tmp_path, output_dir, **overrides):
    keys = dict(
        model_name_or_path=assets["student"],
        teacher_model_name_or_path=assets["teacher"],
        dataset_name=assets["data"],
        output_dir=str(output_dir),
        max_steps=3,
        per_device_train_batch_size=4,
        max_completion_length=3,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=1,
        dataset_test_size=4,
        eval_num_samples=1,
        seed=0,
    )
    keys.update(overrides)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(keys))
    return str(path)


def test_two_gkd_runs_never_share_an_output_dir(assets, tmp_path, capsys):
    out = tmp_path / "out"
    config = gkd_yaml(assets, tmp_path, out)
    assert main(["gkd", "--config", config]) == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["gkd", "--config", config, "--max_steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "holds an earlier trl-opd gkd run (checkpoint-1, checkpoint-2, checkpoint-3)" in err
    assert "resume_from_checkpoint: true" in err and "overwrite_output_dir: true" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == first  # nothing touched
    # A resume with other keys is refused, naming each key on both sides.
    assert main(["gkd", "--config", config, "--resume_from_checkpoint", "true", "--lmbda", "0.25"]) == 2
    assert "lmbda: <unset> (then) -> 0.25 (now)" in capsys.readouterr().err
    # --overwrite_output_dir replaces the run: no checkpoint of the first run is left to be resumed by mistake.
    assert main(["gkd", "--config", config, "--max_steps", "2", "--overwrite_output_dir", "true"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_a_checkpoint_of_another_run_is_resumed_only_with_its_keys(assets, tmp_path, capsys):
    config = gkd_yaml(assets, tmp_path, tmp_path / "first", max_steps=1)
    assert main(["gkd", "--config", config]) == 0
    checkpoint = str(tmp_path / "first" / "checkpoint-1")
    argv = ["gkd", "--config", config, "--output_dir", str(tmp_path / "second"), "--resume_from_checkpoint", checkpoint]
    assert main([*argv, "--lmbda", "0.0"]) == 2
    assert "belongs to a run started with other keys: lmbda: <unset> (then) -> 0.0 (now)" in capsys.readouterr().err
    assert not (tmp_path / "second").exists()


def test_gkd_refuses_a_folder_it_did_not_create(assets, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the user's own model")
    assert main(["gkd", "--config", gkd_yaml(assets, tmp_path, out)]) == 2
    assert "is not empty (model.safetensors) and was not created by trl-opd" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == b"the user's own model"


def test_rerunning_a_finished_gkd_run_with_resume_trains_nothing(assets, tmp_path):
    out = tmp_path / "out"
    config = gkd_yaml(assets, tmp_path, out, max_steps=2)
    assert main(["gkd", "--config", config]) == 0
    weights = load_file(str(out / "model.safetensors"))
    for _ in range(2):  # it used to train one step more per rerun: 2 -> 3 -> 4
        assert main(["gkd", "--config", config, "--resume_from_checkpoint", "true"]) == 0
        assert not (out / "checkpoint-3").exists()
        again = load_file(str(out / "model.safetensors"))
        assert all(torch.equal(weights[k], again[k]) for k in weights)


# ------------------------------------------------------------------------------------------ the pipeline's stages


def two_stages(assets, output_dir, online_lmbda=1.0):
    stages = [
        {"name": "offline", "trainer": "gkd", "budget": 0.5, "lmbda": 0.0},
        {"name": "online", "trainer": "gkd", "budget": 0.5, "lmbda": online_lmbda},
    ]
    return recipe(assets, output_dir, max_steps=4, stages=stages)


def test_an_edited_stage_is_not_resumed_from_the_old_recipes_checkpoint(assets, tmp_path):
    keys = two_stages(assets, tmp_path / "run")
    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(keys, callbacks=[KillAfterCheckpoint("online")])
    edited = two_stages(assets, tmp_path / "run", online_lmbda=0.5)
    with pytest.raises(
        OwnershipError, match=r"stage 'online' .* was started with other keys: lmbda: 1.0 \(then\) -> 0.5"
    ):
        run_pipeline(edited)
    assert (tmp_path / "run" / "online" / "checkpoint-1").is_dir()  # refused before anything changed
    entries = run_pipeline(edited, overwrite=True)
    assert entries[1]["resumed_from"] is None and entries[1]["steps"] == 2  # trained again from the first stage
    stage = json.loads((tmp_path / "run" / "online" / "stage.json").read_text())
    assert stage["keys_digest"] == entries[1]["keys_digest"]
    assert entries[0]["resumed_from"] is None and entries[0]["steps"] == 2  # the first stage was kept


def test_a_resumed_stage_reports_its_loss_over_all_its_steps(assets, tmp_path):
    keys = two_stages(assets, tmp_path / "run")
    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(keys, callbacks=[KillAfterCheckpoint("online")])
    resumed = run_pipeline(keys)
    straight = run_pipeline(two_stages(assets, tmp_path / "straight"))
    assert resumed[1]["resumed_from"].endswith("checkpoint-1")
    loss = straight[1]["metrics"]["train/train_loss"]
    assert resumed[1]["metrics"]["train/train_loss"] == pytest.approx(loss, rel=1e-3)


def test_a_pipeline_refuses_a_folder_it_did_not_create(assets, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(OwnershipError, match="was not created by trl-opd"):
        run_pipeline(two_stages(assets, tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------------------ validation before compute


@pytest.mark.parametrize(
    "online, message",
    [
        ({"lmbda": "abc"}, "lmbda in {recipe}, stage 'online' must be a finite number, got 'abc' (str)."),
        ({"lmbda": 2.0}, "{recipe}, stage 'online': "),
        ({"max_completion_length": [3]}, "max_completion_length in {recipe}, stage 'online' must be an integer"),
        (
            {"teacher_model_name_or_path": "org/no-such-teacher"},
            "{recipe}, stage 'online': teacher_model_name_or_path 'org/no-such-teacher' is no local folder and is not "
            "in the Hugging Face cache",
        ),
        ({"curriculum": {"warmup": "x"}}, "{recipe}, stage 'online': unknown key 'warmup'"),
    ],
)
def test_check_parses_every_stage_as_the_run_will(assets, tmp_path, capsys, online, message):
    keys = two_stages(assets, tmp_path / "run")
    keys["stages"][1].update(online)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(keys))
    message = message.format(recipe=path)
    assert main(["pipeline", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    if "lmbda" in online and online["lmbda"] == 2.0:
        assert "lmbda" in err
    with pytest.raises(RecipeError, match="stage 'online'"):
        run_pipeline(str(path))
    assert not (tmp_path / "run").exists()  # refused before the first stage trained


@pytest.mark.parametrize("command", ["gkd", "pipeline", "plan"])
def test_malformed_yaml_is_one_error_line_with_file_line_and_column(tmp_path, capsys, command):
    path = tmp_path / "broken.yaml"
    path.write_text("max_steps: 3\nlmbda: [0.5\nseed: 0\n")
    argv = {"gkd": ["gkd", "--config", str(path)], "pipeline": ["pipeline", str(path)],
            "plan": ["plan", "--config", str(path)]}[command]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"trl-opd {command}: error: {path}:3:5: not valid YAML")


def test_plan_config_names_the_key_of_a_bad_value(tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "smollm2:student", "per_device_train_batch_size": "abc"}))
    assert main(["plan", "--config", str(path)]) == 2
    assert f"per_device_train_batch_size in {path} must be an integer, got 'abc'" in capsys.readouterr().err


def test_an_output_dir_that_cannot_be_written_is_refused_before_training(assets, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["gkd", "--config", gkd_yaml(assets, tmp_path, tmp_path / "file" / "out")]) == 2
    assert "cannot create output_dir" in capsys.readouterr().err


def test_a_key_given_twice_in_yaml_is_refused_not_silently_overridden(tmp_path, capsys):
    path = tmp_path / "twice.yaml"
    path.write_text("lmbda: 0.1\nmax_steps: 2\nlmbda: 0.9\n")
    assert main(["gkd", "--config", str(path)]) == 2
    assert f"{path}:3:1: not valid YAML: the key 'lmbda' is given twice" in capsys.readouterr().err


def test_overwrite_and_resume_together_are_refused(assets, tmp_path, capsys):
    config = gkd_yaml(assets, tmp_path, tmp_path / "out")
    assert main(["gkd", "--config", config, "--overwrite_output_dir", "true", "--resume_from_checkpoint", "true"]) == 2
    assert "overwrite_output_dir: true deletes the checkpoints that resume_from_checkpoint" in capsys.readouterr().err


def test_a_later_stage_folder_the_package_does_not_own_is_refused_before_stage_one(assets, tmp_path):
    keys = two_stages(assets, tmp_path / "run")
    run_dir = tmp_path / "run"
    run_pipeline({**keys, "stages": keys["stages"][:1] + [{**keys["stages"][1], "name": "other"}]})  # owns run/
    (run_dir / "online").mkdir()
    (run_dir / "online" / "notes.txt").write_text("mine")
    with pytest.raises(OwnershipError, match="stage 'online' .* was not created by trl-opd"):
        run_pipeline({**keys, "stages": [{**keys["stages"][0], "lmbda": 0.5}, keys["stages"][1]]}, overwrite=True)
    assert json.loads((run_dir / "offline" / "stage.json").read_text())["steps"] == 2  # stage 1 was not retrained


def test_lab_from_results_names_the_unreadable_file(tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text("{oops")
    assert main(["lab", "--from-results", str(path), "--output", str(tmp_path / "report")]) == 2
    assert f"trl-opd lab: error: {path}: Expecting property name" in capsys.readouterr().err
