"""``trl-opd gkd|minillm|spin --config FILE.yaml [--flag value]`` on tiny models saved to disk."""

import json
import subprocess
import sys

import pytest
import yaml
from cli_assets import write_assets

from trl_opd.cli import main


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_assets(tmp_path_factory.mktemp("cli_assets"))


def write_yaml(path, **keys):
    path.write_text(yaml.safe_dump(keys))
    return str(path)


def base_keys(assets, output_dir, **overrides):
    keys = dict(
        model_name_or_path=assets["student"],
        teacher_model_name_or_path=assets["teacher"],
        dataset_name=assets["data"],
        output_dir=str(output_dir),
        max_steps=1,
        per_device_train_batch_size=4,
        max_completion_length=3,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        reward_funcs=["cli_assets:addition_accuracy"],
        eval_num_samples=1,
        dataset_test_size=4,
    )
    keys.update(overrides)
    return keys


def test_keys_json_matches_the_dataclasses():
    from trl_opd.pipeline.keys import collect, load

    assert collect() == load(), "trl_opd/pipeline/keys.json is stale: run python -m trl_opd.pipeline.keys --write"


def test_help_answers_without_importing_torch():
    code = (
        "import sys; from trl_opd.cli import main; main(['gkd', '--help']); "
        "assert not [m for m in ('torch', 'transformers', 'trl') if m in sys.modules], 'heavy import'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--lmbda", "--lora_r", "--teacher_model_name_or_path", "--token_importance", "--dataset_name"):
        assert flag in out.stdout


def test_gkd_trains_from_yaml_and_flags_override_it(assets, tmp_path, capsys):
    out = tmp_path / "gkd"
    keys = base_keys(assets, out, lmbda=0.0, token_importance={"top_fraction": 0.5})
    config = write_yaml(tmp_path / "gkd.yaml", **keys)
    assert main(["gkd", "--config", config, "--lmbda", "1.0", "--max_steps", "2"]) == 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    card = (out / "README.md").read_text()
    assert "trl-opd" in card and "constant λ = 1" in card and "generalized JSD(β = 0.5)" in card
    assert assets["teacher"] in card and assets["data"] in card and "| optimizer steps | 2 |" in card
    assert "rkl_on_student_samples" in card and "addition_accuracy_greedy" in card
    assert "steps in" in capsys.readouterr().out


def test_minillm_trains_a_lora_adapter_from_yaml(assets, tmp_path):
    out = tmp_path / "minillm"
    keys = base_keys(assets, out, num_generations=2, use_peft=True, lora_r=4, lora_target_modules=["q_proj", "v_proj"])
    config = write_yaml(tmp_path / "minillm.yaml", **keys)
    assert main(["minillm", "--config", config, "--lora_r", "2", "--extrapolation_lambda", "1.5"]) == 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 2  # the flag won over the YAML's 4
    card = (out / "README.md").read_text()
    assert "MiniLLM" in card and "ExOPD λ = 1.5" in card and "library_name: peft" in card


def test_spin_trains_from_yaml(assets, tmp_path):
    out = tmp_path / "spin"
    keys = base_keys(assets, out, max_rounds=1, num_saturation_samples=2, dataset_train_size=8)
    config = write_yaml(tmp_path / "spin.yaml", **keys)
    assert main(["spin", "--config", config, "--loss_type", "hinge"]) == 0
    assert (out / "model.safetensors").exists() and (out / "rounds.json").exists()
    assert "DPO hinge loss" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    "keys, flags, message",
    [
        ({"lmdba": 0.5}, [], "unknown key 'lmdba' in "),
        ({}, ["--lmbda_shedule", "linear"], "unknown flag --lmbda_shedule; did you mean --lmbda_schedule?"),
        ({"token_importance": {"keep_fractoin": 0.5}}, [], "did you mean 'keep_fraction'?"),
        ({"reward_funcs": ["no_such_module:f"]}, [], "cannot be imported"),
    ],
)
def test_bad_keys_are_refused_naming_the_fix(assets, tmp_path, capsys, keys, flags, message):
    config = write_yaml(tmp_path / "bad.yaml", **base_keys(assets, tmp_path / "bad", **keys))
    assert main(["gkd", "--config", config, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err
    if "lmdba" in keys:
        assert "did you mean 'lmbda'?" in err
