"""The non-finite guard: a NaN gradient, loss, reward or teacher output never reaches the weights or a checkpoint."""

import math
import os

import pytest
import torch
from helpers import make_minillm_trainer, make_trainer
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import TrainerCallback

from trl_opd.tiny import tiny_llama
from trl_opd.trainers.guard import NonFiniteError


class NaNGradientAt(TrainerCallback):
    """Makes the gradient of one parameter NaN during the given optimizer steps (1-based); the loss stays finite."""

    def __init__(self, model, steps, name_part="mlp.down_proj"):
        self.model, self.steps, self.name_part, self.handles = model, set(steps), name_part, []
        self.param_name = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 in self.steps:
            name, param = next(
                (n, p) for n, p in self.model.named_parameters() if self.name_part in n and p.requires_grad
            )
            self.param_name = name
            self.handles.append(param.register_hook(lambda g: torch.full_like(g, math.nan)))

    def on_step_end(self, args, state, control, **kwargs):
        for handle in self.handles:
            handle.remove()
        self.handles = []


def trainable_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def checkpoint_tensors(folder):
    files = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    out = {}
    for f in files:
        out.update(load_file(os.path.join(folder, f)))
    return out


SAVE_EACH_STEP = dict(save_strategy="steps", save_steps=1, max_steps=4)


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_gkd_nan_gradient_stops_before_the_update_and_keeps_the_last_good_checkpoint(tmp_path, tok, dataset, peft):
    trainer = make_trainer(tmp_path, tok, dataset, lmbda=0.0, **SAVE_EACH_STEP)
    if peft:  # rebuild with LoRA adapters
        trainer = make_trainer(tmp_path, tok, dataset, lmbda=0.0, **SAVE_EACH_STEP)
        from trl_opd import GKDTrainer

        trainer = GKDTrainer(
            model=tiny_llama(len(tok), tokenizer=tok, seed=1),
            teacher_model=trainer.teacher.unwrapped,
            args=trainer.args,
            train_dataset=dataset,
            processing_class=tok,
            peft_config=LoraConfig(r=4, target_modules=["down_proj", "q_proj"]),
        )
    callback = NaNGradientAt(trainer.accelerator.unwrap_model(trainer.model), steps=[3])
    trainer.add_callback(callback)
    before = {}

    class Snapshot(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                before.update(trainable_state(trainer.accelerator.unwrap_model(trainer.model)))

    trainer.add_callback(Snapshot())
    with pytest.raises(NonFiniteError, match=r"Step 3: the gradient of 1 parameter tensor\(s\) \(.*down_proj"):
        trainer.train()
    after = trainable_state(trainer.accelerator.unwrap_model(trainer.model))
    assert all(torch.equal(before[n], after[n]) for n in before), "the NaN step changed the weights"
    assert all(torch.isfinite(t).all() for t in after.values())
    assert not (tmp_path / "checkpoint-3").exists()
    good = checkpoint_tensors(tmp_path / "checkpoint-2")
    assert good and all(torch.isfinite(t).all() for t in good.values() if t.is_floating_point())


def test_gkd_skip_policy_drops_the_step_counts_it_and_trains_on(tmp_path, tok, dataset):
    trainer = make_trainer(tmp_path, tok, dataset, lmbda=0.0, nonfinite_policy="skip", **SAVE_EACH_STEP)
    trainer.add_callback(NaNGradientAt(trainer.model, steps=[3]))
    trainer.train()
    assert trainer.state.global_step == 4
    skipped = [log["nonfinite/skipped_steps"] for log in trainer.state.log_history if "nonfinite/skipped_steps" in log]
    assert skipped and max(skipped) == 1.0
    step2, step3 = checkpoint_tensors(tmp_path / "checkpoint-2"), checkpoint_tensors(tmp_path / "checkpoint-3")
    assert all(torch.equal(step2[k], step3[k]) for k in step2), "a skipped step must leave the weights as they were"
    step4 = checkpoint_tensors(tmp_path / "checkpoint-4")
    assert any(not torch.equal(step3[k], step4[k]) for k in step3) and all(
        torch.isfinite(t).all() for t in step4.values() if t.is_floating_point()
    )


def test_gkd_skip_policy_stops_after_consecutive_skips(tmp_path, tok, dataset):
    trainer = make_trainer(
        tmp_path, tok, dataset, lmbda=0.0, nonfinite_policy="skip", max_nonfinite_skips=2, max_steps=5
    )
    trainer.add_callback(NaNGradientAt(trainer.model, steps=[2, 3, 4, 5]))
    with pytest.raises(NonFiniteError, match="2 consecutive optimizer steps were skipped"):
        trainer.train()
    assert trainer.state.global_step == 2  # steps 2 and 3 skipped, the error raised at step 3


def test_save_model_refuses_non_finite_weights(tmp_path, tok, dataset):
    trainer = make_trainer(tmp_path, tok, dataset, lmbda=0.0)
    with torch.no_grad():
        next(trainer.model.parameters()).view(-1)[0] = math.inf
    with pytest.raises(NonFiniteError, match="Refusing to save"):
        trainer.save_model(str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_gkd_rkl_with_a_zero_probability_teacher_trains_finite(tmp_path, tok, dataset):
    teacher = tiny_llama(len(tok), tokenizer=tok, seed=2)
    bias = torch.zeros(len(tok))
    bias[5:15] = -math.inf  # the teacher gives these tokens exactly zero probability
    teacher.lm_head.bias = torch.nn.Parameter(bias, requires_grad=False)
    trainer = make_trainer(tmp_path, tok, dataset, teacher=teacher, lmbda=1.0, divergence="rkl", max_steps=3)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(math.isfinite(x) for x in losses)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_gkd_nan_teacher_logits_name_the_divergence(tmp_path, tok, dataset):
    teacher = tiny_llama(len(tok), tokenizer=tok, seed=2)
    with torch.no_grad():
        teacher.lm_head.weight[3, 0] = math.nan
    trainer = make_trainer(tmp_path, tok, dataset, teacher=teacher, lmbda=0.0, divergence="rkl", max_steps=1)
    with pytest.raises(NonFiniteError, match="Step 1: the per-token rkl divergence"):
        trainer.train()


# ------------------------------------------------------------------------------------------------------ MiniLLM


def minillm(tmp_path, tok, dataset, reward_funcs=None, **overrides):
    return make_minillm_trainer(tmp_path, tok, dataset, reward_funcs=reward_funcs, **{"max_steps": 3, **overrides})


def test_minillm_nan_gradient_stops_before_the_update(tmp_path, tok, dataset):
    trainer = minillm(tmp_path, tok, dataset, save_strategy="steps", save_steps=1)
    trainer.add_callback(NaNGradientAt(trainer.model, steps=[2]))
    with pytest.raises(NonFiniteError, match="Step 2: the gradient"):
        trainer.train()
    assert not (tmp_path / "checkpoint-2").exists() and (tmp_path / "checkpoint-1").exists()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def infinite_reward(prompts, completions, **kwargs):
    return [math.inf] + [0.0] * (len(completions) - 1)


def nan_reward(prompts, completions, **kwargs):
    return [math.nan] * len(completions)


def text_reward(prompts, completions, **kwargs):
    return ["good"] * len(completions)


def sometimes_none(prompts, completions, **kwargs):
    return [None if i % 2 else 1.0 for i in range(len(completions))]


@pytest.mark.parametrize(("func", "match"), [(infinite_reward, "infinite_reward"), (nan_reward, "nan_reward")])
def test_minillm_non_finite_reward_stops_naming_the_function(tmp_path, tok, dataset, func, match):
    trainer = minillm(tmp_path, tok, dataset, reward_funcs=[func])
    with pytest.raises(NonFiniteError, match=f"Step 1: the reward .* of the reward function '{match}'"):
        trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_minillm_non_number_reward_is_refused(tmp_path, tok, dataset):
    trainer = minillm(tmp_path, tok, dataset, reward_funcs=[text_reward])
    with pytest.raises(TypeError, match="'text_reward' returned 'good'"):
        trainer.train()


def test_minillm_none_rewards_are_counted_and_logged(tmp_path, tok, dataset):
    trainer = minillm(tmp_path, tok, dataset, reward_funcs=[sometimes_none], max_steps=2)
    trainer.train()
    counts = [
        log["rewards/sometimes_none/none"] for log in trainer.state.log_history if "rewards/sometimes_none/none" in log
    ]
    assert counts and counts[-1] > 0


def test_minillm_skip_policy_drops_a_non_finite_reward_step(tmp_path, tok, dataset):
    calls = []

    def flaky(prompts, completions, **kwargs):
        calls.append(1)
        return [math.inf if len(calls) == 1 else 0.0] * len(completions)

    trainer = minillm(tmp_path, tok, dataset, reward_funcs=[flaky], nonfinite_policy="skip")
    start = trainable_state(trainer.model)
    trainer.train()
    assert trainer.state.global_step == 3
    skipped = [log["nonfinite/skipped_steps"] for log in trainer.state.log_history if "nonfinite/skipped_steps" in log]
    assert skipped and max(skipped) == 1.0
    assert any(not torch.equal(start[n], p) for n, p in trainable_state(trainer.model).items())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
