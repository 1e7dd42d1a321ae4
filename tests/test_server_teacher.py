"""A teacher behind a vLLM-style server (trl_opd.teachers.server), against a fake server on loopback (no vLLM needed).

The fake computes vLLM's ``prompt_logprobs`` answer from a local model, so a run served by it must train like the same
teacher held locally with the same k; its faults show each failure ends in a clear error before any weight changes.
tests/with_vllm/test_vllm_server_teacher.py repeats the equality against a real vLLM server in the vLLM venv.
"""

import socket

import pytest
import torch
from fake_vllm import FakeVLLM
from helpers import make_minillm_trainer, make_trainer

from trl_opd.teachers.server import ServerError, ServerTeacher, TeacherServer, check_server_compatibility
from trl_opd.tiny import tiny_llama


K = 8
RUN = dict(max_steps=2, per_device_train_batch_size=4, teacher_top_k=K)


@pytest.fixture(scope="module")
def teacher(tok):
    return tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=48)


@pytest.fixture
def server(teacher, tok):
    with FakeVLLM(teacher, tok) as fake:
        yield fake


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def student(tok):
    return tiny_llama(len(tok), tokenizer=tok, seed=1)


def test_a_mixed_gkd_run_on_a_server_teacher_equals_the_local_teacher_with_the_same_k(
    tmp_path, server, teacher, tok, dataset
):
    local = make_trainer(tmp_path / "local", tok, dataset, student=student(tok), teacher=teacher, **RUN)
    local.train()  # each trainer seeds at init: build and train one after the other, so both sample alike
    served = make_trainer(tmp_path / "served", tok, dataset, student=student(tok), teacher=server.url, **RUN)
    assert isinstance(served.teacher, ServerTeacher) and served.teacher_model is None  # no teacher weights here
    assert served.compatibility.facts["served model"] == "tiny-teacher"
    served.train()
    fractions = logged(served, "on_policy_fraction")
    assert fractions == logged(local, "on_policy_fraction") and 0.0 < sum(fractions) < len(fractions)  # mixed
    assert logged(served, "loss") == pytest.approx(logged(local, "loss"), rel=1e-5, abs=1e-6)
    for p, q in zip(local.model.parameters(), served.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
    scored = [p for path, p in server.requests if path == "/v1/completions"]
    assert scored and all(p["prompt_logprobs"] == K and p["max_tokens"] == 1 for p in scored)
    with pytest.raises(ValueError, match="teacher cache or a server"):
        served.sample_guards(dataset.select(range(2)))


def test_the_targets_are_the_local_teachers_top_k_and_tail(server, teacher, tok):
    from trl_opd.divergences import LMHead
    from trl_opd.divergences.topk import topk_targets_from_hidden
    from trl_opd.scoring import last_hidden_states

    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16]])
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]]).bool()
    remote = ServerTeacher(TeacherServer(server.url), K, len(tok)).score(ids, attention, 3, mask)
    hidden = last_hidden_states(teacher, ids, attention, 3)[mask]
    local = topk_targets_from_hidden(hidden, LMHead.of(teacher), K, len(tok))
    assert torch.equal(remote.targets.ids, local.ids)
    torch.testing.assert_close(remote.targets.log_probs, local.log_probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(remote.targets.tail_log_prob, local.tail_log_prob, atol=1e-5, rtol=0)
    log_probs = torch.log_softmax(teacher(ids, attention_mask=attention).logits.float(), -1)
    exact = log_probs[:, -4:-1].gather(-1, ids[:, -3:].unsqueeze(-1)).squeeze(-1)[mask]
    torch.testing.assert_close(remote.token_log_probs, exact, atol=1e-6, rtol=0)


def test_minillm_rewards_from_a_server_equal_the_local_teachers(tmp_path, server, teacher, tok, dataset):
    local = make_minillm_trainer(tmp_path / "l", tok, dataset, student=student(tok), teacher=teacher, teacher_top_k=K)
    local.train()
    served = make_minillm_trainer(
        tmp_path / "s", tok, dataset, student=student(tok), teacher=server.url, teacher_top_k=K
    )
    served.train()
    key = "rewards/teacher_logprob/mean"
    assert logged(served, key) == pytest.approx(logged(local, key), abs=1e-5)
    assert logged(served, "loss") == pytest.approx(logged(local, "loss"), abs=1e-5)


def test_rows_are_routed_to_their_own_server_by_teacher_id(tmp_path, teacher, tok, dataset):
    other = tiny_llama(len(tok), tokenizer=tok, seed=3, hidden_size=48)
    routed = dataset.map(lambda _, i: {"teacher_id": "a" if i % 2 else "b"}, with_indices=True)
    with FakeVLLM(teacher, tok) as a, FakeVLLM(other, tok) as b:
        trainer = make_trainer(tmp_path, tok, routed, teacher={"a": a.url, "b": b.url}, **RUN)
        trainer.train()
        for fake in (a, b):
            assert any(path == "/v1/completions" for path, _ in fake.requests)
    assert logged(trainer, "teacher/a/tokens") and logged(trainer, "teacher/b/tokens")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_server_is_retried_a_bounded_number_of_times_then_named():
    client = TeacherServer(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.0, timeout=2)
    with pytest.raises(ServerError, match=r"did not answer /v1/models after 3 tries.*Check that it is running"):
        client.models()


def test_a_slow_server_times_out_with_a_clear_error(server):
    server.faults["delay"] = 1.5
    with pytest.raises(ServerError, match="timeout 0.5 s"):
        TeacherServer(server.url + "#tiny-teacher", timeout=0.5, retries=0).tokenize("1+1")


def test_a_transient_failure_is_retried_and_a_bad_request_is_not(server, tok):
    server.faults["status"] = [503, 500]
    client = TeacherServer(server.url, retries=2, backoff=0.0)
    assert client.tokenize("1+2=") == tok.encode("1+2=", add_special_tokens=False)
    server.faults["status"] = [503, 503, 503]
    with pytest.raises(ServerError, match="after 3 tries.*HTTP 503"):
        client.tokenize("1+2=")
    server.faults["status"] = []
    with pytest.raises(ServerError, match="greater than max allowed.*--max-logprobs"):
        client.prompt_logprobs([[5, 6, 7]], 64)
    assert sum(path == "/v1/completions" for path, _ in server.requests) == 1  # a 400 is not retried


@pytest.mark.parametrize("nan", ["nan", "null"])
def test_a_nan_answer_stops_training_before_any_weight_changes(tmp_path, server, tok, dataset, nan):
    trainer = make_trainer(tmp_path, tok, dataset, teacher=server.url, **RUN)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    server.faults["nan"] = nan
    with pytest.raises(ServerError, match="log-probability of nan.*Nothing was trained on it"):
        trainer.train()
    for p, q in zip(before, trainer.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_server_dying_mid_run_stops_training_naming_it(tmp_path, teacher, tok, dataset):
    fake = FakeVLLM(teacher, tok).__enter__()
    trainer = make_trainer(tmp_path, tok, dataset, teacher=fake.url, teacher_server_retries=1, **RUN)
    fake.__exit__()
    with pytest.raises(ServerError, match=rf"{fake.url} did not answer /v1/completions after 2 tries"):
        trainer.train()


def test_a_different_chat_template_or_model_name_is_refused(tmp_path, server, tok, dataset):
    server.faults["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    report = check_server_compatibility(TeacherServer(server.url), tok)
    assert not report.ok and "chat template" in report.format()
    with pytest.raises(ValueError, match="renders the chat template differently"):
        make_trainer(tmp_path, tok, dataset, teacher=server.url, **RUN)
    server.faults["chat_template"] = None
    with pytest.raises(ServerError, match=r"does not serve 'other'; it serves \['tiny-teacher'\]"):
        make_trainer(tmp_path, tok, dataset, teacher=server.url + "#other", **RUN)


def test_a_k_above_the_servers_max_logprobs_stops_the_run_before_training(tmp_path, server, tok, dataset):
    with pytest.raises(ServerError, match="greater than max allowed: 20.*--max-logprobs"):
        make_trainer(tmp_path, tok, dataset, teacher=server.url, **{**RUN, "teacher_top_k": 21})


def test_what_needs_the_teachers_weights_or_another_temperature_is_refused(tmp_path, server, tok, dataset):
    with pytest.raises(ValueError, match="without its scheme: write 'http://127.0.0.1:8000'"):
        make_trainer(tmp_path, tok, dataset, teacher="127.0.0.1:8000", **RUN)
    with pytest.raises(ValueError, match="set teacher_top_k"):
        make_trainer(tmp_path, tok, dataset, teacher=server.url, max_steps=1)
    with pytest.raises(ValueError, match="seq_kd samples off-policy completions from the teacher"):
        make_trainer(tmp_path, tok, dataset, teacher=server.url, seq_kd=True, **RUN)
    with pytest.raises(ValueError, match="temperature 1, but this run uses 0.5"):
        make_trainer(tmp_path, tok, dataset, teacher=server.url, loss_temperature=0.5, **RUN)
    with pytest.raises(ValueError, match="max_model_len 16"):
        server.max_model_len = 16
        make_trainer(tmp_path, tok, dataset, teacher=server.url, max_prompt_length=12, **RUN)


def test_tip_and_a_teacher_cache_combine_with_a_server_teacher(tmp_path, server, teacher, tok, dataset):
    """λ = 0.5 with TIP weights and the off-policy rows served by a teacher cache: the server scores the on-policy rows
    only, and the run trains as with the local teacher."""
    from trl_opd import build_teacher_cache
    from trl_opd.hooks import TokenImportance

    cache = str(tmp_path / "cache")
    build_teacher_cache(teacher, tok, dataset, K, cache, max_completion_length=6, batch_size=16)
    run = {**RUN, "teacher_cache": cache, "max_steps": 3}

    def trainer(name, teacher_model):
        tip = TokenImportance(mode="top_fraction", keep_fraction=0.5)
        return make_trainer(tmp_path / name, tok, dataset, student(tok), teacher_model, token_importance=tip, **run)

    local = trainer("local", teacher)
    local.train()
    served = trainer("served", server.url)
    served.train()
    assert logged(served, "teacher/cache/tokens") and logged(served, "teacher/teacher/tokens")
    assert logged(served, "teacher/teacher/tokens") == logged(local, "teacher/teacher/tokens")
    assert logged(served, "loss") == pytest.approx(logged(local, "loss"), rel=1e-5, abs=1e-6)
    scored_rows = sum(len(p["prompt"]) for path, p in server.requests if path == "/v1/completions") - 1  # the probe
    assert scored_rows == sum(round(f * 4) for f in logged(served, "on_policy_fraction"))  # on-policy rows only


def test_trl_opd_check_probes_a_teacher_server(tmp_path, server, tok, capsys):
    from trl_opd.cli import main as cli_main

    folder = tmp_path / "student"
    tiny_llama(len(tok), tokenizer=tok, seed=1).save_pretrained(folder)
    tok.save_pretrained(folder)
    assert cli_main(["check", "--student", str(folder), "--teacher", server.url]) == 0
    out = capsys.readouterr().out
    assert "served model                 tiny-teacher" in out and "verdict: compatible" in out
    server.faults["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert cli_main(["check", "--student", str(folder), "--teacher", server.url]) == 1
    assert "renders the chat template differently" in capsys.readouterr().out
