"""The teacher/student compatibility check: tokenizers, chat templates, special ids, head sizes, and `trl-opd check`."""

import copy

import pytest
import torch
from helpers import make_trainer

from trl_opd.cli import main
from trl_opd.compatibility import check_compatibility, compare_heads, compare_tokenizers
from trl_opd.tiny import DEFAULT_ALPHABET, char_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def permuted():
    """A tokenizer of the same size as the tiny tasks' one whose characters map to other ids."""
    return char_tokenizer(DEFAULT_ALPHABET[::-1])


def save(folder, tokenizer, seed=0):
    model = tiny_llama(len(tokenizer), tokenizer=tokenizer, seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def levels(problems):
    return {(p.level, p.what.split(" in their ")[-1].rstrip(".").split(" (")[0]) for p in problems}


def test_same_tokenizer_has_no_problem(tok):
    assert compare_tokenizers(tok, copy.deepcopy(tok)) == []


def test_each_difference_is_named_with_its_level(tok, permuted):
    assert ("error", "vocabulary") in levels(compare_tokenizers(tok, permuted))
    other_template = copy.deepcopy(tok)
    other_template.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    assert levels(compare_tokenizers(tok, other_template)) == {("error", "chat template")}
    other_eos = copy.deepcopy(tok)
    other_eos.eos_token = "<bos>"
    assert ("error", "eos_token_id") in levels(compare_tokenizers(tok, other_eos))
    other_pad = copy.deepcopy(tok)
    other_pad.pad_token = "<eos>"
    assert levels(compare_tokenizers(tok, other_pad)) == {("warning", "pad_token_id")}


def test_heads_shared_rows_and_suppressed_ids():
    assert compare_heads(49, 49, 49) == (49, [], [])
    shared, suppressed, problems = compare_heads(56, 52, 49)
    assert shared == 52 and suppressed == list(range(49, 56)) and problems[0].level == "warning"
    shared, _, problems = compare_heads(40, 52, 49)
    assert problems[0].level == "error" and "Vocabulary mismatch: the tokenizer has 49 tokens" in problems[0].what


def test_teacher_folder_with_another_tokenizer_is_refused_by_the_trainer(tmp_path, tok, dataset, permuted):
    teacher = save(tmp_path / "teacher", permuted, seed=2)
    with pytest.raises(
        ValueError, match="(?s)cannot teach this student.*differ in their vocabulary.*Fix: use a teacher"
    ):
        make_trainer(tmp_path / "out", tok, dataset, teacher=teacher)


def test_teacher_instance_loaded_from_its_folder_is_compared_with_that_tokenizer(tmp_path, tok, dataset, permuted):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(save(tmp_path / "teacher", permuted, seed=2))
    with pytest.raises(ValueError, match="differ in their vocabulary"):
        make_trainer(tmp_path / "out", tok, dataset, teacher=teacher)


def test_explicit_teacher_tokenizer_and_warn_mode(tmp_path, tok, dataset, permuted):
    from trl_opd import GKDTrainer

    trainer = make_trainer(tmp_path / "a", tok, dataset)  # an instance with no folder: compared on head sizes only
    assert trainer.compatibility.ok
    assert any("unknown" in p.what for p in trainer.compatibility.problems)
    kwargs = dict(
        model=tiny_llama(len(tok), tokenizer=tok, seed=1),
        teacher_model=trainer.teacher.unwrapped,
        train_dataset=dataset,
        processing_class=tok,
        teacher_processing_class=permuted,
    )
    with pytest.raises(ValueError, match="differ in their vocabulary"):
        GKDTrainer(args=trainer.args, **kwargs)
    trainer.args.compatibility_check = "warn"
    assert not GKDTrainer(args=trainer.args, **kwargs).compatibility.ok  # trains anyway, the report is kept


def test_student_head_larger_than_the_teachers_never_samples_the_extra_ids(tmp_path, tok, dataset):
    student = tiny_llama(len(tok) + 7, tokenizer=tok, seed=1)
    with torch.no_grad():  # make the extra rows the most likely tokens: without suppression they would be sampled
        student.lm_head.weight[len(tok) :] = 0.0
        student.lm_head.bias = torch.nn.Parameter(torch.cat([torch.zeros(len(tok)), torch.full((7,), 50.0)]))
    trainer = make_trainer(tmp_path, tok, dataset, student=student, lmbda=1.0, max_steps=2)
    assert trainer.compatibility.suppressed_ids == list(range(len(tok), len(tok) + 7))
    sampled = []
    original = trainer._generate_and_score_completions

    def recording(inputs):
        output = original(inputs)
        sampled.append(output["completion_ids"][output["completion_mask"].bool()])
        return output

    trainer._generate_and_score_completions = recording
    trainer.train()  # before: an IndexError inside the teacher's embedding (a device assert on GPU)
    assert sampled and all(int(ids.max()) < len(tok) for ids in sampled)


def test_check_report_and_exit_codes(tmp_path, tok, permuted, capsys):
    student = save(tmp_path / "student", tok)
    assert main(["check", "--student", student, "--teacher", save(tmp_path / "same", tok, seed=3)]) == 0
    assert "verdict: compatible" in capsys.readouterr().out
    assert main(["check", "--student", student, "--teacher", save(tmp_path / "other", permuted)]) == 1
    out = capsys.readouterr().out
    assert "differ in their vocabulary" in out and "verdict: NOT compatible" in out
    assert main(["check", "--student", student, "--teacher", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_check_reports_the_teachers_nll_on_a_dataset(tmp_path, tok, dataset, capsys):
    student, teacher = save(tmp_path / "student", tok), save(tmp_path / "teacher", tok, seed=3)
    data = tmp_path / "rows.jsonl"
    dataset.select(range(8)).to_json(str(data))
    assert main(["check", "--student", student, "--teacher", teacher, "--dataset", str(data), "--rows", "4"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("teacher NLL"))
    assert 1.0 < float(line.split()[-1]) < 8.0  # a random 49-token model: about log 49 = 3.9 nats


def test_check_compatibility_on_models(tok):
    report = check_compatibility(tiny_llama(len(tok), tokenizer=tok), tiny_llama(len(tok), tokenizer=tok), tok, tok)
    assert report.ok and report.shared_vocab_size == len(tok) and report.suppressed_ids == []
