"""scripts/results_table.py: its own logic (stage budgets, aggregation over seeds, the table, the held-out split) and
one tiny-model run of the pipeline row and of the ``trl.DistillationTrainer`` row."""

import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from trl_opd.tiny import tiny_llama


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "results_table.py"
spec = importlib.util.spec_from_file_location("results_table", SCRIPT)
results_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_table)


@pytest.mark.parametrize(
    ("total", "fractions", "expected"),
    [
        (16, (0.25, 0.5, 0.25), [4, 8, 4]),
        (3, (0.25, 0.5, 0.25), [1, 1, 1]),
        (10, (0.25, 0.5, 0.25), [3, 5, 2]),
        (7, (0.2, 0.4, 0.4), [1, 3, 3]),
    ],
)
def test_stage_steps_sum_to_the_total(total, fractions, expected):
    steps = results_table.stage_steps(total, fractions)
    assert steps == expected
    assert sum(steps) == total and min(steps) >= 1


def test_stage_steps_refuses_bad_budgets():
    with pytest.raises(ValueError, match="sum to 1"):
        results_table.stage_steps(10, (0.5, 0.6))
    with pytest.raises(ValueError, match="raise --steps"):
        results_table.stage_steps(2, (0.25, 0.5, 0.25))


def test_pipeline_stages_ramp_lambda_and_share_the_budget():
    stages = results_table.row_stages("pipeline", 16)
    assert [n for _, n in stages] == [4, 8, 4]
    assert stages[0][0] == {"lmbda": 0.0} and stages[-1][0] == {"lmbda": 1.0}
    assert stages[1][0]["lmbda_schedule"] == "linear"
    assert results_table.row_stages("gkd", 16) == [({"lmbda": 0.5}, 16)]


def test_aggregate_is_mean_and_half_range():
    per_seed = [{"seed": 0, "a": 1.0, "b": None, "name": "x"}, {"seed": 1, "a": 3.0, "b": 2.0}]
    summary = results_table.aggregate(per_seed)
    assert summary == {"a": (2.0, 1.0, 2), "b": (2.0, 0.0, 1)}


def test_separated_needs_the_seed_ranges_apart():
    assert results_table.separated((1.0, 0.1, 2), (1.5, 0.2, 2))
    assert not results_table.separated((1.0, 0.3, 2), (1.5, 0.2, 2))


def test_separation_report_names_the_rows_apart_with_their_sign():
    results = {
        "before": [{"seed": 0, "greedy_accuracy": 0.0, "student_eos_rate": 0.5}, {"seed": 1, "greedy_accuracy": 0.1}],
        "kd": [{"seed": 0, "greedy_accuracy": 0.5, "student_eos_rate": 0.6}, {"seed": 1, "greedy_accuracy": 0.3}],
        "gkd": [{"seed": 0, "greedy_accuracy": 0.05}, {"seed": 1, "greedy_accuracy": 0.2}],
    }
    assert results_table.separation_report(results, "before") == ["greedy acc.: kd +", "EOS rate: kd +"]
    assert results_table.separation_report(results, "gkd") == ["greedy acc.: kd +"]  # gkd has no EOS rate
    assert results_table.separation_report(results, "trl") == []


def test_format_table_orders_rows_and_marks_missing_columns():
    results = {
        "gkd": [{"seed": 0, "greedy_accuracy": 0.5, "seconds_per_step": 2.0}],
        "before": [{"seed": 0, "greedy_accuracy": 0.25}, {"seed": 1, "greedy_accuracy": 0.75}],
    }
    lines = results_table.format_table(results).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| before training | 2 | 0.500 ± 0.250 |")
    assert lines[3].startswith("| GKD λ = 0.5 | 1 | 0.500 ± 0.000 |") and lines[3].endswith("| 2.0 ± 0.0 |")
    assert "| – |" in lines[2]  # no seconds per step before training


def test_drop_overlap_removes_held_out_questions():
    rows = [{"prompt": [{"role": "user", "content": q}], "entry_index": i} for i, q in enumerate("abcd")]
    kept, dropped = results_table.drop_overlap(["b", "d", "z"], Dataset.from_list(rows))
    assert dropped == 2 and kept["entry_index"] == [0, 2]


@pytest.mark.slow
@pytest.mark.parametrize("row", ["pipeline", "trl"])
def test_a_row_trains_its_steps_on_tiny_models(row, tok, dataset, tmp_path):
    args = types.SimpleNamespace(
        steps=3,
        batch_size=4,
        learning_rate=1e-2,
        max_completion_length=4,
        beta=0.5,
        trl_beta=1.0,
        workdir=str(tmp_path),
    )
    student = tiny_llama(len(tok), tokenizer=tok, seed=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher = tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=48)
    model, per_step, steps = results_table.train(row, 0, args, student, teacher, tok, dataset, tmp_path)
    assert steps == 3 and per_step > 0
    assert model is student  # every stage continued training the same weights
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_from_json_prints_the_table(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"results": {"kd": [{"seed": 0, "greedy_accuracy": 0.125}]}}))
    results_table.main(["--from_json", str(path)])
    assert "| off-policy only: supervised KD, λ = 0 | 1 | 0.125 ± 0.000 |" in capsys.readouterr().out


@pytest.mark.slow
def test_the_pipeline_api_row_trains_the_same_stages(dataset, tmp_path):
    from cli_assets import write_assets
    from transformers import AutoModelForCausalLM

    assets = write_assets(tmp_path / "assets")
    args = types.SimpleNamespace(
        steps=4, batch_size=4, learning_rate=1e-2, max_completion_length=4, beta=0.5, trl_beta=1.0, workdir=""
    )
    recipe = results_table.pipeline_recipe(args, 0, assets["student"], assets["teacher"], "data", tmp_path / "run")
    assert [s["budget"] for s in recipe["stages"]] == [f for _, f, _ in results_table.PIPELINE]
    assert recipe["lr_scheduler_type"] == "constant" and recipe["seed"] == 0
    model, per_step, steps = results_table.train_with_pipeline_api(
        0, args, assets["student"], assets["teacher"], dataset.select(range(32)), tmp_path
    )
    assert steps == 4 and per_step > 0
    for stage in ("warmup", "ramp", "on_policy"):
        assert (tmp_path / "pipeline_api-0" / "run" / stage / "stage.json").is_file()
    start = AutoModelForCausalLM.from_pretrained(assets["student"]).state_dict()
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_measure_cells_fills_seed_by_seed_and_skips_measured_cells(tmp_path):
    """A rerun into the same JSON measures only the missing cells; each cell is written as soon as it is measured."""
    path = tmp_path / "results.json"
    calls = []

    def produce(row, seed):
        calls.append((row, seed))
        return {"row": row}, {"steps": 1}

    def held_out(model, seed):
        assert json.loads(path.read_text())["results"] if path.is_file() else True  # earlier cells already on disk
        return {"accuracy": 0.5 if model["row"] == "a" else 0.25}

    record = results_table.measure_cells(path, {"run": 1}, ["a", "b"], [0], produce, held_out)
    assert calls == [("a", 0), ("b", 0)]
    assert record["results"]["b"][0]["accuracy"] == 0.25 and record["results"]["a"][0]["seed"] == 0
    calls.clear()
    record = results_table.measure_cells(path, {"run": 2}, ["a", "b"], [0, 1], produce, held_out)
    assert calls == [("a", 1), ("b", 1)]  # seed 0 was measured by the first run
    assert [r["seed"] for r in record["results"]["a"]] == [0, 1]
    assert [i["run"] for i in json.loads(path.read_text())["invocations"]] == [1, 2]
