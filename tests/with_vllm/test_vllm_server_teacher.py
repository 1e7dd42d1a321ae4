"""A teacher on a real vLLM server (loopback, float32): GKD (λ = 0.5) and MiniLLM train with the loss of the same
teacher held locally at the same k. Runs in the vLLM venv (tests/with_vllm/conftest.py)."""

import pytest


pytest.importorskip("vllm", reason="vLLM is not installed (the vLLM tests run in their own venv: docs/teacher.md)")

import torch  # noqa: E402
from helpers import make_minillm_trainer, make_trainer  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from trl_opd.teachers.server import ServerTeacher  # noqa: E402


K = 8


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def test_gkd_on_a_vllm_server_teacher_equals_the_local_teacher(tmp_path, teacher_server, model_dirs, tok, dataset):
    run = dict(max_steps=2, per_device_train_batch_size=4, teacher_top_k=K, lmbda=0.5)
    local = make_trainer(tmp_path / "l", tok, dataset, load(model_dirs["student"]), load(model_dirs["teacher"]), **run)
    local.train()  # each trainer seeds at init: one after the other, so both sample the same rollouts
    served = make_trainer(tmp_path / "s", tok, dataset, load(model_dirs["student"]), teacher_server, **run)
    assert isinstance(served.teacher, ServerTeacher) and served.compatibility.facts["served model"] == "tiny-teacher"
    served.train()
    fractions = logged(served, "on_policy_fraction")
    assert fractions == logged(local, "on_policy_fraction") and 0 < sum(fractions) < len(fractions)
    assert served.teacher.requests >= 2
    assert logged(served, "loss") == pytest.approx(logged(local, "loss"), rel=1e-4, abs=1e-6)
    for p, q in zip(local.model.parameters(), served.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_minillm_on_a_vllm_server_teacher_equals_the_local_teacher(tmp_path, teacher_server, model_dirs, tok, dataset):
    def trainer(name, teacher):
        return make_minillm_trainer(
            tmp_path / name, tok, dataset, load(model_dirs["student"]), teacher, teacher_top_k=K, max_steps=1
        )

    local = trainer("l", load(model_dirs["teacher"]))
    local.train()
    served = trainer("s", teacher_server)
    served.train()
    key = "rewards/teacher_logprob/mean"  # the exact teacher log-prob of each sampled token
    assert logged(served, key) == pytest.approx(logged(local, key), rel=1e-4)
    assert logged(served, "loss") == pytest.approx(logged(local, "loss"), rel=1e-4, abs=1e-6)
