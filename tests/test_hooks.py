"""TIP and flawed-prefix rejection: hand-computed cases, and all three hooks inside GKDTrainer."""

import json
import logging
import math

import pytest
import torch
from helpers import make_trainer

from trl_opd.hooks import FlawedPrefixFilter, PacedCurriculum, TokenImportance, importance_scores
from trl_opd.hooks.prefix_filter import longest_loop, perplexity
from trl_opd.hooks.token_importance import student_entropy_scores
from trl_opd.tiny import tiny_llama


# ------------------------------------------------------------------------------------------------------ TIP, by hand

# The tutorial's five tokens, V = 32000, tau = 0.30: (word, teacher entropy, KL). It prints 0.029 and 0.798 for
# "the" and "integration"; the true scores are 0.0298 and 0.8081.
SEED_TOKENS = [
    ("the", 0.08, 0.03),
    ("integration", 0.15, 0.82),
    ("um", 2.30, 0.45),
    ("equals", 0.05, 0.91),
    ("maybe", 1.80, 0.12),
]


def test_seed_five_token_table():
    h = torch.tensor([t[1] for t in SEED_TOKENS])
    d = torch.tensor([t[2] for t in SEED_TOKENS])
    scores = importance_scores(h, d, 32000)
    expected = [(1 - hh / math.log(32000)) * dd for _, hh, dd in SEED_TOKENS]
    assert scores.tolist() == pytest.approx(expected, abs=1e-6)
    assert [round(x, 3) for x in scores.tolist()] == [0.030, 0.808, 0.350, 0.906, 0.099]
    weights, metrics = TokenImportance(mode="threshold", threshold=0.30, normalize=False).weights(
        d, h, torch.zeros(5), 32000
    )
    assert ["TRAIN" if w else "skip" for w in weights.tolist()] == ["skip", "TRAIN", "TRAIN", "TRAIN", "skip"]
    assert metrics["tip/kept_fraction"] == pytest.approx(0.6)
    assert metrics["tip/mean_score"] == pytest.approx(sum(expected) / 5, abs=1e-6)


def test_weight_modes_have_mean_one_and_keep_the_right_tokens():
    d = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.0, 0.3])
    h = torch.zeros(6)
    top = TokenImportance(mode="top_fraction", keep_fraction=0.5).weights(d, h, h, 100)[0]
    assert top.tolist() == pytest.approx([0, 2, 0, 2, 0, 2])
    assert TokenImportance(mode="top_fraction", keep_fraction=0.01).weights(d, h, h, 100)[0].count_nonzero() == 1
    soft = TokenImportance(mode="soft").weights(d, h, h, 100)[0]
    assert soft.mean().item() == pytest.approx(1.0) and soft.tolist() == pytest.approx((d / d.mean()).tolist())
    threshold = TokenImportance(mode="threshold", threshold=0.25).weights(d, h, h, 100)[0]
    assert threshold.tolist() == pytest.approx([0, 2, 0, 2, 0, 2])
    none_kept, metrics = TokenImportance(mode="threshold", threshold=5.0).weights(d, h, h, 100)
    assert none_kept.sum() == 0 and metrics["tip/kept_fraction"] == 0.0


def test_student_entropy_scorer():
    d, hs = torch.tensor([0.5, 0.2]), torch.tensor([2.0, 0.1])
    assert student_entropy_scores(hs, d).tolist() == pytest.approx([1.0, 0.02])
    w = TokenImportance(scorer="student_entropy", mode="top_fraction", keep_fraction=0.5).weights(
        d, torch.zeros(2), hs, 10
    )[0]
    assert w.tolist() == [2.0, 0.0]


def test_tip_refuses_bad_settings():
    with pytest.raises(ValueError, match="'teacher_confidence', 'student_entropy'"):
        TokenImportance(scorer="entropy")
    with pytest.raises(ValueError, match="'threshold', 'top_fraction', 'soft'"):
        TokenImportance(mode="hard")
    with pytest.raises(ValueError, match="keep_fraction must be in"):
        TokenImportance(keep_fraction=0.0)


# ------------------------------------------------------------------------------------------- prefix filter, by hand


def test_longest_loop_and_perplexity_by_hand():
    assert longest_loop([5] * 8, 8) == (8, 1)
    assert longest_loop([1, 2, 3] * 3, 8) == (9, 3)
    assert longest_loop([1, 2, 3, 4, 5, 6], 8) == (0, 0)
    assert longest_loop([9, 1, 2, 1, 2, 1, 2, 7], 8) == (6, 2)
    assert perplexity([math.log(0.5)] * 4) == pytest.approx(2.0)
    assert perplexity([math.log(0.1), math.log(0.001)]) == pytest.approx(100.0)


def test_filter_reasons():
    f = FlawedPrefixFilter(max_perplexity=50.0)
    the = [17] * 8  # "the the the the the the the the"
    assert f.reason(the, [0.0] * 8) == "loop"
    assert f.reason([1, 2, 3] * 3, [0.0] * 9) is None  # 3 repeats < loop_min_repeats = 4
    assert f.reason([1, 2, 3] * 4, [0.0] * 12) == "loop"
    assert f.reason([1, 2, 3, 4], [math.log(0.01)] * 4) == "perplexity"  # PPL 100 > 50
    assert f.reason([1, 2, 3, 4], [math.log(0.1)] * 4) is None  # PPL 10
    assert FlawedPrefixFilter(max_perplexity=None).reason([1, 2, 3, 4]) is None
    with pytest.raises(ValueError, match="token log-probabilities"):
        f.reason([1, 2, 3, 4])
    with pytest.raises(ValueError, match="'drop', 'replace'"):
        FlawedPrefixFilter(policy="resample")
    with pytest.raises(ValueError, match="max_perplexity must be > 1"):
        FlawedPrefixFilter(max_perplexity=0.5)


# ------------------------------------------------------------------------------------------- hooks inside GKDTrainer


def looping_student(tok, token="7"):
    """A student whose head always says ``token``: its rollouts are "7777...", a loop of period 1."""
    model = tiny_llama(len(tok), tokenizer=tok, seed=1)
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[tok.convert_tokens_to_ids(token)] = 10.0
    model.lm_head = head
    return model


def logged(trainer, key):
    return [log[key] for log in trainer.state.log_history if key in log]


def test_looping_student_rollouts_are_rejected_and_replaced(tmp_path, tok, dataset):
    trainer = make_trainer(
        tmp_path,
        tok,
        dataset,
        student=looping_student(tok),
        lmbda=1.0,
        max_steps=2,
        max_completion_length=12,
        prefix_filter=FlawedPrefixFilter(policy="replace"),
    )
    trainer.train()
    assert logged(trainer, "prefix_filter/rejected") == [4.0, 4.0]
    assert logged(trainer, "prefix_filter/rejected_loop") == [4.0, 4.0]
    assert logged(trainer, "on_policy_fraction") == [0.0, 0.0]  # every row fell back to the dataset completion


def test_dropping_every_rollout_falls_back_off_policy_with_a_warning(tmp_path, tok, dataset, caplog):
    trainer = make_trainer(
        tmp_path,
        tok,
        dataset,
        student=looping_student(tok),
        lmbda=1.0,
        max_steps=1,
        max_completion_length=12,
        prefix_filter=FlawedPrefixFilter(policy="drop"),
    )
    with caplog.at_level(logging.WARNING, logger="trl_opd.trainers.gkd"):
        trainer.train()
    assert "Every rollout of this batch was rejected" in caplog.text
    assert logged(trainer, "num_tokens_trained")[0] > 0


def test_dropped_rows_leave_the_loss_and_the_token_count(tmp_path, tok, dataset):
    # lambda = 0.5: the looping on-policy rows are dropped, the off-policy rows still train.
    trainer = make_trainer(
        tmp_path,
        tok,
        dataset,
        student=looping_student(tok),
        lmbda=0.5,
        max_steps=1,
        per_device_train_batch_size=8,
        max_completion_length=12,
        prefix_filter=FlawedPrefixFilter(policy="drop"),
    )
    trainer.model.train()
    rows = [dataset[i] for i in range(8)]
    inputs = trainer._prepare_inputs(rows)
    on_policy_rows = int(trainer._metrics["train"]["prefix_filter/rejected"][-1])
    assert 0 < on_policy_rows < 8
    lengths = inputs["completion_mask"].sum(1)
    assert int((lengths == 0).sum()) == on_policy_rows
    assert int(inputs["num_items_in_batch"]) == int(lengths.sum())


def test_perplexity_rejection_of_a_uniform_student(tmp_path, tok, dataset):
    student = tiny_llama(len(tok), tokenizer=tok, seed=1)
    with torch.no_grad():
        student.lm_head.weight.zero_()  # uniform over 49 tokens: perplexity 49
    trainer = make_trainer(
        tmp_path,
        tok,
        dataset,
        student=student,
        lmbda=1.0,
        max_steps=1,
        max_completion_length=6,
        learning_rate=0.0,
        prefix_filter=FlawedPrefixFilter(max_perplexity=20.0, policy="replace"),
    )
    trainer.train()
    assert logged(trainer, "prefix_filter/rejected_perplexity") == [4.0]


def test_tip_keeps_the_requested_fraction_and_logs_it(tmp_path, tok, dataset):
    trainer = make_trainer(
        tmp_path,
        tok,
        dataset,
        lmbda=0.0,
        max_steps=2,
        per_device_train_batch_size=8,
        token_importance=TokenImportance(mode="top_fraction", keep_fraction=0.25),
    )
    trainer.train()
    kept = logged(trainer, "tip/kept_fraction")
    assert len(kept) == 2 and all(0.25 <= k <= 0.4 for k in kept)
    assert all(s > 0 for s in logged(trainer, "tip/mean_score"))


def test_tip_loss_is_the_mean_divergence_over_kept_tokens(tmp_path, tok, dataset):
    from trl_opd import per_token_divergence

    trainer = make_trainer(
        tmp_path,
        tok,
        dataset,
        lmbda=0.0,
        per_device_train_batch_size=8,
        token_importance=TokenImportance(mode="top_fraction", keep_fraction=0.5),
    )
    trainer.model.train()
    inputs = trainer._prepare_inputs([dataset[i] for i in range(8)])
    loss = trainer.compute_loss(trainer.model, inputs).item()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    k = inputs["completion_ids"].size(1)
    with torch.no_grad():
        s = trainer.model(input_ids=ids).logits[:, -k - 1 : -1]
        t = trainer.teacher_model(input_ids=ids).logits[:, -k - 1 : -1]
    d = per_token_divergence(s, t, "jsd", 0.5)[inputs["completion_mask"].bool()]
    from trl_opd.divergences import entropy_from_logits

    h = entropy_from_logits(t)[inputs["completion_mask"].bool()]
    scores = importance_scores(h, d, len(tok))
    n_kept = math.ceil(0.5 * d.numel())
    expected = d[scores.topk(n_kept).indices].sum() / n_kept * d.numel() / int(inputs["num_items_in_batch"])
    assert loss == pytest.approx(expected.item(), rel=1e-4)


def test_all_three_hooks_end_to_end_with_checkpointed_curriculum(tmp_path, tok, dataset):
    curriculum = PacedCurriculum()
    trainer = make_trainer(
        tmp_path,
        tok,
        dataset,
        lmbda=0.5,
        max_steps=4,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=2,
        token_importance=TokenImportance(mode="top_fraction", keep_fraction=0.5),
        prefix_filter=FlawedPrefixFilter(max_perplexity=500.0),
        curriculum=curriculum,
    )
    trainer.train()
    for key in (
        "tip/kept_fraction",
        "prefix_filter/rejected_fraction",
        "curriculum/mean_p",
        "curriculum/weight_entropy",
        "lmbda",
        "num_tokens_trained",
    ):
        assert logged(trainer, key), key
    saved = json.loads((tmp_path / "checkpoint-4" / "paced_curriculum.json").read_text())
    assert saved
    assert (tmp_path / "checkpoint-2" / "paced_curriculum.json").exists()


def test_curriculum_resume_draws_the_same_examples(tmp_path, tok, dataset):
    def run(output_dir, resume=None):
        drawn = []
        trainer = make_trainer(
            output_dir,
            tok,
            dataset,
            lmbda=0.0,
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            curriculum=PacedCurriculum(),
            per_device_train_batch_size=4,
        )
        original = trainer._generate_and_score_completions

        def recording(inputs):
            drawn.append(sorted(row["example_index"] for row in inputs))
            return original(inputs)

        trainer._generate_and_score_completions = recording
        trainer.train(resume_from_checkpoint=resume)
        return drawn

    full = run(tmp_path / "a")
    resumed = run(tmp_path / "a", resume=str(tmp_path / "a" / "checkpoint-2"))
    assert len(full) == 4 and resumed == full[2:]


def test_curriculum_needs_an_indexable_dataset(tmp_path, tok, dataset):
    with pytest.raises(ValueError, match="map-style"):
        make_trainer(tmp_path, tok, dataset.to_iterable_dataset(), max_steps=1, curriculum=PacedCurriculum())
    with pytest.raises(ValueError, match="success_func only feeds the curriculum"):
        make_trainer(tmp_path, tok, dataset, success_func=lambda **kw: [1.0])
    with pytest.raises(TypeError, match="token_importance must be a trl_opd.hooks.TokenImportance"):
        make_trainer(tmp_path, tok, dataset, token_importance=0.5)
