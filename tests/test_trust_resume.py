"""Issue 22, case 9 and 8: resume is exact across epoch boundaries (TRL's sampler epoch, the random generators at a
boundary, the PACED curriculum), also killed twice; resuming a finished run trains nothing."""

import pytest
import torch
from helpers import make_minillm_trainer, make_trainer
from test_resume import KillAfter

from trl_opd.hooks import PacedCurriculum


def record_prompts(trainer, store):
    original = trainer._generate_and_score_completions

    def recording(inputs):
        store.append((trainer.state.global_step, [row["prompt"] for row in inputs]))
        return original(inputs)

    trainer._generate_and_score_completions = recording


# 8 rows in batches of 4: an epoch is 2 steps, so 7 steps cross three epoch boundaries.
RUN = dict(max_steps=7, save_strategy="steps", save_steps=1, lmbda=0.5, per_device_train_batch_size=4)


def gkd(folder, tok, rows, curriculum):
    return make_trainer(folder, tok, rows, **RUN, **({"curriculum": PacedCurriculum()} if curriculum else {}))


def assert_same_run(straight, resumed, order_straight, order_resumed, first):
    assert [o for o in order_straight if o[0] >= first] == order_resumed
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("curriculum", [False, True], ids=["repeat-sampler", "paced-curriculum"])
def test_gkd_resume_is_exact_across_epochs_killed_twice(tmp_path, tok, dataset, curriculum):
    rows = dataset.select(range(8))
    straight, order_straight = gkd(tmp_path / "straight", tok, rows, curriculum), []
    record_prompts(straight, order_straight)
    straight.train()
    for kill in (3, 4):  # inside epoch 2, then at the boundary of epoch 3
        killed = gkd(tmp_path / "killed", tok, rows, curriculum)
        killed.add_callback(KillAfter(kill))
        with pytest.raises(KeyboardInterrupt):
            killed.train(resume_from_checkpoint=None if kill == 3 else str(tmp_path / "killed" / "checkpoint-3"))
    resumed, order_resumed = gkd(tmp_path / "killed", tok, rows, curriculum), []
    record_prompts(resumed, order_resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "killed" / "checkpoint-4"))
    assert_same_run(straight, resumed, order_straight, order_resumed, first=4)


def minillm(folder, tok, rows):
    run = dict(per_device_train_batch_size=4, num_generations=2, max_steps=5, max_completion_length=4, save_steps=1)
    return make_minillm_trainer(folder, tok, rows, save_strategy="steps", **run)


def test_minillm_resume_is_exact_across_epochs(tmp_path, tok, dataset):
    rows = dataset.select(range(4))  # 4 prompts, 2 per step: an epoch is 2 steps
    straight, order_straight = minillm(tmp_path / "straight", tok, rows), []
    record_prompts(straight, order_straight)
    straight.train()
    killed = minillm(tmp_path / "killed", tok, rows)
    killed.add_callback(KillAfter(3))
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    resumed, order_resumed = minillm(tmp_path / "killed", tok, rows), []
    record_prompts(resumed, order_resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "killed" / "checkpoint-3"))
    assert_same_run(straight, resumed, order_straight, order_resumed, first=3)


def test_resuming_a_finished_run_trains_nothing(tmp_path, tok, dataset):
    run = dict(max_steps=3, save_strategy="steps", save_steps=1)
    first = make_trainer(tmp_path, tok, dataset, **run)
    first.train()
    weights = [p.detach().clone() for p in first.model.parameters()]
    for _ in range(2):  # each rerun used to train one step more: 3 -> 4 -> 5
        again = make_trainer(tmp_path, tok, dataset, **run)
        again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
        assert again.state.global_step == 3
        assert not (tmp_path / "checkpoint-4").exists()
        assert all(torch.equal(p, q) for p, q in zip(weights, again.model.parameters(), strict=True))
