"""A pipeline "warm-up -> GKD -> RL -> OPSD" on tiny models: a `grpo` stage (TRL's GRPOTrainer on the recipe's
verifiers) and an OPSD stage (`privileged_teacher`) continue the same adapter."""

import json

import pytest
import torch
from cli_assets import write_assets
from safetensors.torch import load_file
from test_pipeline import FirstLoraWeight, recipe
from trl import GRPOTrainer

from trl_opd import GKDTrainer
from trl_opd.pipeline import RecipeError, load_recipe, run_pipeline


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_assets(tmp_path_factory.mktemp("opsd_pipeline_assets"))


STAGES = [
    {"name": "warmup", "trainer": "gkd", "budget": 0.25, "lmbda": 0.0},
    {"name": "gkd", "trainer": "gkd", "budget": 0.25, "lmbda": 1.0},
    {"name": "rl", "trainer": "grpo", "budget": 0.25, "num_generations": 2, "beta": 0.0},
    {"name": "opsd", "trainer": "gkd", "budget": 0.25, "lmbda": 1.0, "privileged_teacher": "ema"},
]


def test_a_pipeline_with_a_grpo_stage_and_an_opsd_stage_runs_end_to_end(assets, tmp_path, monkeypatch):
    seen, built = FirstLoraWeight(), []
    for cls in (GRPOTrainer, GKDTrainer):
        original = cls.train

        def train(self, *args, _original=original, **kwargs):
            built.append((type(self).__name__, getattr(self.args, "privileged_teacher", None)))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "train", train)
    out = tmp_path / "run"
    keys = recipe(assets, out, max_steps=8, stages=STAGES, privileged_context_format="the answer is {completion}")
    entries = run_pipeline(keys, callbacks=[seen])
    assert [e["name"] for e in entries] == ["warmup", "gkd", "rl", "opsd"]
    assert [e["steps"] for e in entries] == [2, 2, 2, 2]
    assert built == [("GKDTrainer", None), ("GKDTrainer", None), ("GRPOTrainer", None), ("GKDTrainer", "ema")]
    summary = json.loads((out / "summary.json").read_text())
    assert "addition_accuracy_greedy" in summary[2]["metrics"]  # the RL stage is scored by the verifier
    assert "fkl_on_teacher_samples" in summary[3]["metrics"]  # the OPSD stage measures against its own teacher
    for previous, stage in (("gkd", "rl"), ("rl", "opsd")):  # the same adapter carries on through RL and OPSD
        name, start = seen.seen[str(out / stage)]
        saved = load_file(str(out / previous / "adapter_model.safetensors"))
        key = next(k for k in saved if k.endswith(name.split("base_model.model.", 1)[-1].replace(".default", "")))
        assert start.abs().sum() > 0 and torch.equal(start, saved[key])


def test_a_grpo_stage_without_verifiers_is_refused(assets, tmp_path):
    keys = recipe(assets, tmp_path / "run", stages=[STAGES[2] | {"budget": 1.0}], reward_funcs=None)
    del keys["teacher_model_name_or_path"]  # no grpo key
    with pytest.raises(ValueError, match="grpo stage trains on verifiers alone"):
        run_pipeline(keys)
    assert not (tmp_path / "run" / "rl").exists()  # refused before the stage started


def test_the_packaged_opsd_recipe_loads(tmp_path):
    from trl_opd.cli.recipes import recipe_paths

    recipe_ = load_recipe(str(recipe_paths()["opsd-smollm2-cpu"]))
    assert [s.trainer for s in recipe_.stages] == ["gkd", "gkd", "grpo", "gkd"]
    assert recipe_.stages[-1].keys["privileged_teacher"] == "ema"
    with pytest.raises(RecipeError):
        load_recipe(str(tmp_path / "missing.yaml"))
