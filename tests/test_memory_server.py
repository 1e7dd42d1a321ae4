"""The planner with a teacher on a vLLM server (teacher_source="server"): no teacher weights or forward on the training
GPU, the server's top-k targets per micro-batch counted, generation still counted (the student samples here)."""

from dataclasses import replace

import pytest

from trl_opd.cli import main as cli_main
from trl_opd.memory import predict, recipe


def test_a_server_teacher_counts_no_teacher_weights_and_its_targets():
    student, teacher, plan = recipe("7b-nf4-7b-bf16")
    live = predict(student, teacher, replace(plan, teacher_top_k=64))
    served = predict(student, teacher, replace(plan, teacher_source="server", teacher_top_k=64))
    assert live.parts["teacher_weights"] > 10 * 2**30 and live.parts["teacher_forward"] > 0
    assert served.parts["teacher_weights"] == 0 and served.parts["teacher_forward"] == 0
    assert served.parts["teacher_cache_read"] == plan.per_device_batch_size * plan.completion_length * (8 * 64 + 4)
    assert served.parts["kv_cache"] == live.parts["kv_cache"] > 0  # the student still generates on this GPU
    assert served.total < live.total - 10 * 2**30
    assert any("vLLM server" in note for note in served.notes)


def test_a_server_teacher_needs_its_k_and_the_cli_says_where_the_teacher_is(capsys):
    _, _, plan = recipe("7b-nf4-7b-bf16")
    with pytest.raises(ValueError, match="from a vLLM server: set teacher_top_k"):
        replace(plan, teacher_source="server", teacher_top_k=None)
    code = cli_main(["plan", "--recipe", "7b-nf4-7b-bf16", "--teacher-source", "server", "--teacher-top-k", "64"])
    out = capsys.readouterr().out
    assert code == 0 and "teacher on a vLLM server" in out and "targets from a vLLM server" in out
