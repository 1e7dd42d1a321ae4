"""The privileged-context teacher (OPSD): the template rule, the alignment on the completion, the four teacher kinds
(base: no second copy of the weights; ema: exact resume), the data checks, and GKD and MiniLLM training with it."""

import copy
import logging

import pytest
import torch
from datasets import Dataset
from helpers import make_config, make_minillm_config
from peft import LoraConfig
from test_resume import KillAfter, by_step

from trl_opd import GKDTrainer, MiniLLMTrainer
from trl_opd.data import prompt_token_ids
from trl_opd.teachers.alignment import TEACHER_PROMPT_IDS, teacher_view
from trl_opd.teachers.privileged import SelfTeacher, copies_completion, privileged_prompt
from trl_opd.tiny import tiny_llama


def lora():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")


@pytest.fixture(scope="module")
def hinted():
    """Chat rows ``a+b=`` -> ``c`` whose privileged context is ``answer: c``."""
    rows = [(f"{a}+{b}=", str(a + b)) for a in range(6) for b in range(6)]
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p}],
                "completion": [{"role": "assistant", "content": c}],
                "privileged_context": f"answer: {c}",
            }
            for p, c in rows
        ]
    )


def opsd(tmp_path, tok, dataset, kind, student=None, peft=None, **overrides):
    student = student if student is not None else tiny_llama(len(tok), tokenizer=tok, seed=1)
    peft = (lora() if kind == "base" else None) if peft is None else (peft or None)
    values = dict(lmbda=1.0, privileged_teacher=kind) | overrides
    return GKDTrainer(
        model=student,
        args=make_config(tmp_path, **values),
        train_dataset=dataset,
        processing_class=tok,
        peft_config=peft,
    )


# ---------------------------------------------------------------------------------------------------- pure helpers


def test_the_context_goes_into_the_last_user_turn_and_the_prompt_is_left_alone():
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+3="}]
    teacher = privileged_prompt(prompt, "answer: 5")
    assert teacher == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+3=\n\nanswer: 5"}]
    assert prompt[-1]["content"] == "2+3="
    assert privileged_prompt("2+3=", "hint", "[{privileged_context}] {prompt}") == "[hint] 2+3="
    with pytest.raises(ValueError, match="last user turn"):
        privileged_prompt([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "c")


def test_a_context_holding_the_completion_is_detected():
    assert copies_completion("the answer is 42.", [{"role": "assistant", "content": "42"}])
    assert not copies_completion("the answer is 42.", "43")
    assert not copies_completion("anything", "  ")


def test_the_teacher_view_ends_with_the_students_completion():
    completion = torch.tensor([[7, 8, 0], [9, 0, 0]])
    completion_mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    student = torch.cat([torch.tensor([[1, 2], [0, 3]]), completion], dim=1)
    student_mask = torch.cat([torch.tensor([[1, 1], [0, 1]]), completion_mask], dim=1)
    inputs = {
        "completion_ids": completion,
        "completion_mask": completion_mask,
        TEACHER_PROMPT_IDS: torch.tensor([[5, 1, 2], [0, 6, 3]]),
        "teacher_prompt_mask": torch.tensor([[1, 1, 1], [0, 1, 1]]),
    }
    ids, mask = teacher_view(inputs, student, student_mask)
    assert ids.tolist() == [[5, 1, 2, 7, 8, 0], [0, 6, 3, 9, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0]]
    assert teacher_view({"completion_ids": completion}, student, student_mask)[0] is student  # no teacher prompt
    with pytest.raises(RuntimeError, match="align"):
        teacher_view(inputs, student.flip(1), student_mask)


# ---------------------------------------------------------------------------------------------------- the trainer


def unpadded(ids, mask):
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


def test_the_teacher_sees_the_privileged_prompt_and_the_student_does_not(tmp_path, tok, hinted):
    trainer = opsd(tmp_path, tok, hinted, "live", max_steps=1)
    seen = {}
    original = trainer.teacher.hidden_states

    def recording(input_ids, attention_mask, logits_to_keep):
        seen.setdefault("teacher", []).extend(unpadded(input_ids, attention_mask))
        return original(input_ids, attention_mask, logits_to_keep)

    trainer.teacher.hidden_states = recording
    generate = trainer._generate_and_score_completions

    def batch(inputs):
        output = generate(inputs)
        seen["rows"] = inputs
        seen["student"] = unpadded(output["prompt_ids"], output["prompt_mask"])
        seen["completions"] = unpadded(output["completion_ids"], output["completion_mask"])
        return output

    trainer._generate_and_score_completions = batch
    trainer.train()
    for row, student, completion in zip(seen["rows"], seen["student"], seen["completions"], strict=True):
        expected_student = prompt_token_ids(tok, row["prompt"])
        teacher_prompt = privileged_prompt(row["prompt"], row["privileged_context"])
        expected_teacher = prompt_token_ids(tok, teacher_prompt)
        assert student == list(expected_student)  # the student's prompt is unchanged
        assert "answer:" not in tok.decode(student)
        assert list(expected_teacher) + completion in seen["teacher"]  # the same template, then the same completion
        assert tok.decode(expected_teacher).endswith(f"answer: {row['completion'][0]['content']}\nassistant: ")
    assert trainer.state.log_history[0]["privileged/extra_prompt_tokens"] > 0
    assert "prompts/truncated" not in trainer.state.log_history[0]  # no max_prompt_length: nothing counted


def test_the_teachers_prompt_truncations_are_counted_apart(tmp_path, tok, hinted):
    trainer = opsd(tmp_path, tok, hinted, "live", max_steps=1, max_prompt_length=28)  # student 22, teacher 33+
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["prompts/truncated"] == 0 and log["privileged/prompts_truncated"] == 4


def storages(module):
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


def test_the_base_teacher_is_the_students_own_weights_with_the_adapter_off(tmp_path, tok, hinted):
    base = tiny_llama(len(tok), tokenizer=tok, seed=1)
    reference = tiny_llama(len(tok), tokenizer=tok, seed=1)  # the same weights, never trained
    trainer = opsd(tmp_path, tok, hinted, "base", student=base, learning_rate=5e-2)
    before = sum(p.numel() for p in trainer.model.parameters())
    teacher = trainer.teacher
    assert isinstance(teacher, SelfTeacher) and teacher.unwrapped is trainer.accelerator.unwrap_model(trainer.model)
    trainer.train()
    # No second copy: the trainer holds no parameter storage beyond the student's own.
    assert storages(teacher.unwrapped) == storages(trainer.model)
    assert sum(p.numel() for p in trainer.model.parameters()) == before
    ids = torch.tensor([tok.encode("1+2=\n\nanswer: 3\nassistant: 3")])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = reference.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -3:-1]
        student = trainer.model.get_base_model().model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(teacher.hidden_states(ids, mask, 2), expected, atol=1e-6)  # the adapter was trained, yet
    assert not torch.allclose(student[:, -3:-1], expected, atol=1e-4)  # the teacher is the base model


def test_the_frozen_teacher_is_a_copy_at_step_0_and_the_live_one_is_the_student(tmp_path, tok, hinted):
    frozen = opsd(tmp_path / "frozen", tok, hinted, "frozen")
    assert not storages(frozen.teacher.unwrapped) & storages(frozen.model)
    start = [p.detach().clone() for p in frozen.teacher.unwrapped.parameters()]
    frozen.train()
    assert all(torch.equal(a, b) for a, b in zip(start, frozen.teacher.unwrapped.parameters(), strict=True))
    live = opsd(tmp_path / "live", tok, hinted, "live", max_steps=1)
    assert live.teacher.unwrapped is live.accelerator.unwrap_model(live.model)


@pytest.mark.parametrize("kind", ["base", "frozen", "live", "ema"])
def test_gkd_trains_with_each_kind(tmp_path, tok, hinted, kind):
    trainer = opsd(tmp_path, tok, hinted, kind, lmbda=0.5, teacher_top_k=4, divergence="fkl")
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any(loss > 0 for loss in losses)  # the hint changes the teacher: not the student's own distribution


@pytest.mark.parametrize("kind", ["base", "frozen", "live", "ema"])
def test_minillm_trains_with_a_privileged_teacher(tmp_path, tok, hinted, kind):
    trainer = MiniLLMTrainer(
        model=tiny_llama(len(tok), tokenizer=tok, seed=1),
        args=make_minillm_config(tmp_path, privileged_teacher=kind),
        train_dataset=hinted.remove_columns("completion"),
        processing_class=tok,
        peft_config=lora() if kind == "base" else None,
    )
    seen = []
    original = trainer.teacher.token_log_probs
    trainer.teacher.token_log_probs = lambda ids, *a, **k: seen.append(tok.decode(ids[0])) or original(ids, *a, **k)
    trainer.train()
    assert seen and all("answer:" in text for text in seen)
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in trainer.state.log_history if "loss" in log)


def ema_run(output_dir, tok, dataset):
    return opsd(
        output_dir, tok, dataset, "ema", max_steps=6, save_strategy="steps", save_steps=3, privileged_ema_rate=0.5
    )


def test_resume_with_the_ema_teacher_is_exact(tmp_path, tok, hinted):
    straight = ema_run(tmp_path / "straight", tok, hinted)
    straight.train()
    killed = ema_run(tmp_path / "killed", tok, hinted)
    killed.add_callback(KillAfter(3))
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    assert (tmp_path / "killed" / "checkpoint-3" / "privileged_teacher_ema.pt").is_file()
    resumed = ema_run(tmp_path / "killed", tok, hinted)
    resumed.train(resume_from_checkpoint=str(tmp_path / "killed" / "checkpoint-3"))
    later = {s: v for s, v in by_step(straight, "loss").items() if s > 3}
    assert later and {s: by_step(resumed, "loss")[s] for s in later} == later
    for name, value in straight.teacher.ema.weights.items():
        assert torch.equal(value, resumed.teacher.ema.weights[name]), name
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_an_ema_resume_without_its_state_is_refused(tmp_path, tok, hinted):
    plain = opsd(tmp_path / "plain", tok, hinted, "live", max_steps=1, save_strategy="steps", save_steps=1)
    plain.train()
    resumed = opsd(tmp_path / "plain", tok, hinted, "ema", max_steps=2)
    with pytest.raises(FileNotFoundError, match="privileged_teacher_ema.pt"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-1"))


# ---------------------------------------------------------------------------------------------------- refusals


def test_rows_without_a_context_are_refused_before_training(tmp_path, tok, hinted):
    rows = hinted.to_list()
    rows[3]["privileged_context"] = ""
    with pytest.raises(ValueError, match="1 of 36 rows have an empty or missing `privileged_context`"):
        opsd(tmp_path, tok, Dataset.from_list(rows), "live")
    with pytest.raises(ValueError, match="needs a `privileged_context` column"):
        opsd(tmp_path, tok, hinted.remove_columns("privileged_context"), "live")
    rows = hinted.to_list()
    rows[5]["prompt"] = rows[5]["prompt"] + [{"role": "assistant", "content": "1"}]
    with pytest.raises(ValueError, match="Row 5: A privileged context goes into the last user turn"):
        opsd(tmp_path, tok, Dataset.from_list(rows), "live")
    with pytest.raises(ValueError, match="needs a `privileged_context` column"):  # the evaluation's rows too
        GKDTrainer(
            model=tiny_llama(len(tok), tokenizer=tok, seed=1),
            args=make_config(tmp_path, privileged_teacher="live", lmbda=1.0),
            train_dataset=hinted,
            eval_dataset=hinted.remove_columns("privileged_context"),
            processing_class=tok,
        )


def test_a_context_holding_the_completion_is_flagged(tmp_path, tok, hinted, caplog):
    with caplog.at_level(logging.WARNING):
        trainer = opsd(tmp_path, tok, hinted, "live")
    assert trainer.privileged_verbatim_rows == len(hinted)
    assert "36 of 36 rows hold their completion verbatim" in caplog.text
    rows = [dict(row, privileged_context="think about carries") for row in hinted.to_list()]
    assert opsd(tmp_path, tok, Dataset.from_list(rows), "live").privileged_verbatim_rows == 0


def test_settings_a_self_teacher_cannot_take_are_refused(tmp_path, tok, hinted):
    with pytest.raises(ValueError, match="has none: pass peft_config"):
        opsd(tmp_path, tok, hinted, "base", peft=False)
    with pytest.raises(ValueError, match="cannot be combined with teacher_model"):
        GKDTrainer(
            model=tiny_llama(len(tok), tokenizer=tok, seed=1),
            teacher_model=tiny_llama(len(tok), tokenizer=tok, seed=2),
            args=make_config(tmp_path, privileged_teacher="live"),
            train_dataset=hinted,
            processing_class=tok,
        )
    with pytest.raises(ValueError, match="privileged_teacher must be one of"):
        make_config(tmp_path, privileged_teacher="teacher")
    with pytest.raises(ValueError, match="privileged_template must contain"):
        make_config(tmp_path, privileged_teacher="live", privileged_template="{prompt} only")
    with pytest.raises(ValueError, match="privileged_ema_rate"):
        make_config(tmp_path, privileged_teacher="ema", privileged_ema_rate=0.0)


# ---------------------------------------------------------------------------------------------------- check and plan


def test_check_knows_the_self_teacher(tmp_path, tok, hinted, capsys):
    from trl_opd.cli import main

    folder = tmp_path / "student"
    tiny_llama(len(tok), tokenizer=tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    hinted.select(range(6)).to_json(str(good))
    rows = hinted.select(range(6)).to_list()
    rows[2]["privileged_context"] = " "
    Dataset.from_list(rows).to_json(str(bad))
    assert main(["check", "--student", str(folder), "--self-teacher", "base", "--dataset", str(good)]) == 0
    out = capsys.readouterr().out
    assert "rows holding the completion  6" in out and "verdict: compatible" in out
    assert main(["check", "--student", str(folder), "--self-teacher", "ema", "--dataset", str(bad)]) == 1
    assert "1 rows have an empty or missing" in capsys.readouterr().out
    assert main(["check", "--student", str(folder), "--self-teacher", "ema"]) == 2  # no --dataset
    assert main(["check", "--student", str(folder)]) == 2  # neither --teacher nor --self-teacher


def test_a_template_that_moves_the_context_out_of_the_user_turn_is_reported(tok, hinted):
    from trl_opd.teachers.privileged import check_privileged_dataset

    report = check_privileged_dataset(tok, hinted.select(range(3)), "base")
    assert report.ok
    # A template that renders the last user text twice: the context would land in two places.
    twice = "{{ message['role'] + ': ' + message['content'] + ' | ' + message['content'] }}"
    echoing = copy.deepcopy(tok)
    echoing.chat_template = tok.chat_template.replace("{{ message['role'] + ': ' + message['content'] }}", twice)
    report = check_privileged_dataset(echoing, hinted.select(range(3)), "base")
    assert not report.ok and "outside the last user turn" in report.format()


def test_the_planner_counts_each_kind_of_self_teacher():
    from trl_opd.memory import TrainingPlan, predict

    def weights(kind, lora_rank=16):
        plan = TrainingPlan(lora_rank=lora_rank, self_teacher=kind)
        return predict("qwen2.5-7b", "qwen2.5-7b", plan).parts["teacher_weights"]

    student = predict("qwen2.5-7b", "qwen2.5-7b", TrainingPlan()).parts["student_weights"]
    adapters = predict("qwen2.5-7b", "qwen2.5-7b", TrainingPlan()).parts["adapters"]
    assert weights("base") == weights("live") == 0
    assert weights("ema") == adapters  # an average of the trainable weights: the adapter
    assert weights("frozen") == student + adapters  # a copy of the model as it is at step 0
    assert weights("ema", lora_rank=0) == student  # full fine-tuning: every weight is averaged
    with pytest.raises(ValueError, match="set lora_rank > 0"):
        TrainingPlan(lora_rank=0, self_teacher="base")
