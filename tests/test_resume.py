"""Exact resume: a run killed after checkpoint-3 and resumed gives the straight run's steps 4-6 (losses, λ, sampled
token ids and final weights), with every hook on, and leaves the user's arguments untouched."""

import pytest
import torch
from helpers import make_minillm_trainer, make_trainer
from transformers import TrainerCallback

from trl_opd.hooks import FlawedPrefixFilter, PacedCurriculum, TokenImportance


class KillAfter(TrainerCallback):
    """Raises after the checkpoint of step ``step`` is written (``on_save``), like a killed job."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed after checkpoint-{self.step}")


def record_samples(trainer, store):
    """Record the completion ids of every generation batch, by optimizer step."""
    original = trainer._generate_and_score_completions

    def recording(inputs):
        output = original(inputs)
        ids = output["completion_ids"] * output["completion_mask"]
        store.append((trainer.state.global_step, ids.tolist()))
        return output

    trainer._generate_and_score_completions = recording


def by_step(trainer, key):
    return {log["step"]: log[key] for log in trainer.state.log_history if key in log}


def compare(straight, resumed, samples_straight, samples_resumed, keys):
    for key in keys:
        a, b = by_step(straight, key), by_step(resumed, key)
        later = {s: v for s, v in a.items() if s > 3}
        assert later and {s: b[s] for s in later} == later, key
    assert [s for s in samples_straight if s[0] >= 3] == samples_resumed
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), name


GKD_RUN = dict(
    max_steps=6,
    save_strategy="steps",
    save_steps=3,
    lmbda_schedule="three_phase",
    lmbda_warmup_fraction=0.34,
    lmbda_mixed_fraction=0.33,
    divergence="jsd",
)


def gkd(output_dir, tok, dataset):
    trainer = make_trainer(
        output_dir,
        tok,
        dataset,
        token_importance=TokenImportance(mode="top_fraction", keep_fraction=0.5),
        prefix_filter=FlawedPrefixFilter(max_perplexity=1000.0),
        curriculum=PacedCurriculum(),
        **GKD_RUN,
    )
    return trainer


def test_gkd_resume_is_exact_with_every_hook(tmp_path, tok, dataset):
    straight = gkd(tmp_path / "straight", tok, dataset)
    samples_straight = []
    record_samples(straight, samples_straight)
    straight.train()

    killed = gkd(tmp_path / "killed", tok, dataset)
    killed.add_callback(KillAfter(3))
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    resumed = gkd(tmp_path / "killed", tok, dataset)
    args_before = vars(resumed.args).copy()
    samples_resumed = []
    record_samples(resumed, samples_resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "killed" / "checkpoint-3"))
    compare(straight, resumed, samples_straight, samples_resumed, ("loss", "lmbda", "on_policy_fraction"))
    assert vars(resumed.args) == args_before  # the user's arguments are left untouched


def minillm(output_dir, tok, dataset):
    return make_minillm_trainer(
        output_dir, tok, dataset, max_steps=6, save_steps=3, save_strategy="steps",
        token_importance=TokenImportance(mode="top_fraction", keep_fraction=0.5),
        prefix_filter=FlawedPrefixFilter(max_perplexity=1000.0),
    )  # fmt: skip


def test_minillm_resume_is_exact(tmp_path, tok, dataset):
    straight = minillm(tmp_path / "straight", tok, dataset)
    samples_straight = []
    record_samples(straight, samples_straight)
    straight.train()

    killed = minillm(tmp_path / "killed", tok, dataset)
    killed.add_callback(KillAfter(3))
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    resumed = minillm(tmp_path / "killed", tok, dataset)
    samples_resumed = []
    record_samples(resumed, samples_resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "killed" / "checkpoint-3"))
    compare(straight, resumed, samples_straight, samples_resumed, ("loss", "reverse_kl"))
