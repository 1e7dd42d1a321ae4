"""The drop-in points for TRL users (docs/migrating.md): defaults, field names, datasets, tokenizers, the experimental
GKD API, generation settings, evaluation datasets and errors, checked against TRL's classes where it has one."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from helpers import CPU_TRAINING_ARGS, record_generate_masks

from trl_opd import DistillationConfig, DistillationTrainer, GKDConfig, GKDTrainer, per_token_divergence
from trl_opd.tiny import char_tokenizer, tiny_llama


#: Fields whose default differs from TRL's experimental GKDConfig on purpose (docs/migrating.md): TRL's GKDTrainer
#: sets remove_unused_columns=False itself, and its Trainer sampler shuffles as shuffle_dataset=True does here.
GKD_DELIBERATE_DIFFERENCES = {"remove_unused_columns", "shuffle_dataset"}


def _defaults_that_differ(theirs_class, ours_class):
    theirs, ours = (
        theirs_class(output_dir="out", **CPU_TRAINING_ARGS),
        ours_class(output_dir="out", **CPU_TRAINING_ARGS),
    )
    missing = [f.name for f in dataclasses.fields(theirs_class) if not hasattr(ours, f.name)]
    differ = {
        f.name
        for f in dataclasses.fields(theirs_class)
        if f.name not in missing + ["logging_dir"] and getattr(theirs, f.name) != getattr(ours, f.name)
    }
    return missing, differ


def test_distillation_config_has_every_field_and_default_of_trl():
    from trl import DistillationConfig as TRLDistillationConfig

    assert _defaults_that_differ(TRLDistillationConfig, DistillationConfig) == ([], set())
    config = DistillationConfig(output_dir="out", **CPU_TRAINING_ARGS)
    assert (config.lmbda, config.beta, config.temperature, config.loss_temperature) == (1.0, 1.0, 1.0, None)
    assert not config.needs_dataset_completions  # prompt-only datasets, as TRL


def test_gkd_config_has_every_field_and_default_of_trl_experimental_gkd():
    from trl.experimental.gkd import GKDConfig as TRLGKDConfig

    missing, differ = _defaults_that_differ(TRLGKDConfig, GKDConfig)
    assert missing == []
    assert differ == GKD_DELIBERATE_DIFFERENCES
    config = GKDConfig(output_dir="out", **CPU_TRAINING_ARGS)
    assert (config.lmbda, config.beta, config.temperature, config.max_new_tokens) == (0.5, 0.5, 0.9, 128)
    assert config.loss_temperature == 1.0  # TRL's GKD tempers sampling only


def test_max_new_tokens_and_max_completion_length_are_one_setting():
    assert GKDConfig(output_dir="out", max_new_tokens=7, **CPU_TRAINING_ARGS).max_completion_length == 7
    assert GKDConfig(output_dir="out", max_completion_length=9, **CPU_TRAINING_ARGS).max_new_tokens == 9
    with pytest.raises(ValueError, match="give one of them"):
        GKDConfig(output_dir="out", max_new_tokens=7, max_completion_length=9, **CPU_TRAINING_ARGS)


def test_sft_fields_are_honoured_accepted_or_refused_by_name():
    config = GKDConfig(output_dir="out", max_length=64, dataset_num_proc=2, **CPU_TRAINING_ARGS)
    assert config.max_prompt_length == 64  # honoured: prompts left-truncated to max_length
    assert GKDConfig(output_dir="out", max_length=64, max_prompt_length=10, **CPU_TRAINING_ARGS).max_prompt_length == 10
    with pytest.raises(ValueError, match=r"packing=True\) is an SFTConfig setting .* Leave packing at False"):
        GKDConfig(output_dir="out", packing=True, **CPU_TRAINING_ARGS)
    with pytest.raises(ValueError, match="set tokenizer.pad_token"):
        GKDConfig(output_dir="out", pad_token="<pad>", **CPU_TRAINING_ARGS)


def test_today_import_paths_and_config_classes_interchange(tmp_path):
    from trl_opd.trainers.gkd import GKDTrainer as FromModule
    from trl_opd.trainers.gkd_config import GKDConfig as ConfigFromModule

    assert FromModule is GKDTrainer and ConfigFromModule is GKDConfig
    assert issubclass(GKDTrainer, DistillationTrainer) and issubclass(GKDConfig, DistillationConfig)
    from trl import DistillationConfig as TRLDistillationConfig

    with pytest.raises(TypeError, match="args must be a trl_opd.DistillationConfig"):
        DistillationTrainer(
            model="m", teacher_model="t", args=TRLDistillationConfig(output_dir=str(tmp_path), **CPU_TRAINING_ARGS)
        )


# ---------------------------------------------------------------------------------------------------------------------
# Trainers on tiny models
# ---------------------------------------------------------------------------------------------------------------------


def _args(config_class, tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3)
    values.update(CPU_TRAINING_ARGS)
    values.update(overrides)
    if config_class is GKDConfig:
        values.setdefault("max_new_tokens", 4)
    else:
        values.setdefault("max_completion_length", 4)
    return config_class(**values)


def _pair(tok):
    return tiny_llama(len(tok), tokenizer=tok, seed=1), tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=48)


def test_distillation_trainer_trains_on_prompt_only_rows_with_trl_defaults(tmp_path, tok):
    student, teacher = _pair(tok)
    prompts = Dataset.from_list([{"prompt": f"{i}+1="} for i in range(8)])
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(DistillationConfig, tmp_path),
        train_dataset=prompts,
        processing_class=tok,
    )
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert any(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    # TRL's stable trainer: every eos id in a list, the tokenizer's first
    assert isinstance(trainer.generation_config.eos_token_id, list)
    assert tok.eos_token_id in trainer.generation_config.eos_token_id


def test_right_padded_tokenizer_is_accepted_and_prompts_are_left_padded(tmp_path, dataset):
    tok = char_tokenizer()
    tok.padding_side = "right"
    student, teacher = _pair(tok)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(DistillationConfig, tmp_path),
        train_dataset=dataset,
        processing_class=tok,
    )
    seen = record_generate_masks(trainer)
    rows = [{"prompt": "1+1="}, {"prompt": "12+13="}]
    trainer.model.train()
    trainer._generate_and_score_completions(rows)
    mask = seen[0]
    assert mask[0, 0] == 0 and mask[0, -1] == 1  # the short prompt is padded on the left
    assert tok.padding_side == "right"  # the user's tokenizer is left as it was


def test_gkd_trainer_generation_config_follows_trl_experimental_gkd(tmp_path, tok, dataset):
    student, teacher = _pair(tok)
    student.generation_config.eos_token_id = tok.eos_token_id
    args = _args(GKDConfig, tmp_path, max_new_tokens=5)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset, processing_class=tok)
    config = trainer.generation_config
    assert config.eos_token_id == student.generation_config.eos_token_id  # the student's own, not a list
    assert (config.max_new_tokens, config.temperature, config.top_k, config.top_p) == (5, 0.9, 0, 1.0)


def test_gkd_trainer_loss_is_at_temperature_one_while_sampling_at_its_temperature(tmp_path, tok, dataset):
    student, teacher = _pair(tok)
    args = _args(GKDConfig, tmp_path, lmbda=1.0, temperature=0.5)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset, processing_class=tok)
    trainer.model.train()
    inputs = trainer._prepare_inputs([dataset[i] for i in range(4)])
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    k = inputs["completion_ids"].size(1)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, inputs, num_items_in_batch=inputs["completion_mask"].sum()).item()
        s = trainer.model(input_ids=ids, attention_mask=attention).logits[:, -k - 1 : -1]
        t = trainer.teacher_model(input_ids=ids, attention_mask=attention).logits[:, -k - 1 : -1]
    mask = inputs["completion_mask"].bool()
    at_one = per_token_divergence(s, t, "jsd", 0.5, 1.0)[mask].mean().item()
    at_half = per_token_divergence(s, t, "jsd", 0.5, 0.5)[mask].mean().item()
    assert loss == pytest.approx(at_one, rel=1e-4) and loss != pytest.approx(at_half, rel=1e-2)
    assert trainer.generation_config.temperature == 0.5


def test_gkd_trainer_refuses_the_sft_collation_arguments_by_name(tmp_path, tok, dataset):
    student, teacher = _pair(tok)
    with pytest.raises(ValueError, match="does not take data_collator"):
        GKDTrainer(student, teacher, _args(GKDConfig, tmp_path), lambda rows: rows, dataset, processing_class=tok)


def test_messages_eval_set_is_kept_as_given_and_evaluated(tmp_path, tok):
    student, teacher = _pair(tok)
    messages = Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": f"{i}+1="}, {"role": "assistant", "content": f"{i + 1}"}]}
            for i in range(4)
        ]
    )
    trainer = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(GKDConfig, tmp_path, per_device_eval_batch_size=4),
        train_dataset=messages,
        eval_dataset={"a": messages},
        processing_class=tok,
    )
    assert trainer.eval_dataset["a"] is messages
    metrics = trainer.evaluate()
    assert metrics["eval_a_loss"] > 0


def test_vocabulary_mismatch_error_keeps_trl_words(tmp_path, tok, dataset):
    student = tiny_llama(len(tok), tokenizer=tok, seed=1)
    teacher = tiny_llama(len(tok) - 9, seed=2)
    with pytest.raises(ValueError, match="student model has vocab_size 49 but the teacher model has vocab_size 40"):
        DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=_args(DistillationConfig, tmp_path),
            train_dataset=dataset,
            processing_class=tok,
        )


# ---------------------------------------------------------------------------------------------------------------------
# The experimental GKD static methods
# ---------------------------------------------------------------------------------------------------------------------


def test_generalized_jsd_loss_is_callable_on_the_class_and_matches_our_divergence():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    loss = GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=0.3, temperature=0.8)
    ours = per_token_divergence(student, teacher, "jsd", 0.3, 0.8)[labels != -100].mean()
    torch.testing.assert_close(loss, ours, rtol=1e-5, atol=1e-6)
    assert GKDTrainer.generalized_jsd_loss(student, teacher, reduction="none").shape == student.shape


def test_generate_on_policy_outputs_masks_the_prompt_and_after_the_first_stop_token():
    prompts, prompt_mask = torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]])
    generated = torch.cat([prompts, torch.tensor([[7, 9, 8]])], dim=1)
    model = SimpleNamespace(generate=lambda **kwargs: SimpleNamespace(sequences=generated))
    ids, mask, labels = GKDTrainer.generate_on_policy_outputs(
        model, {"prompts": prompts, "prompt_attention_mask": prompt_mask}, SimpleNamespace(eos_token_id=[9])
    )
    assert torch.equal(ids, generated)
    assert mask.tolist() == [[0, 1, 1, 1, 1, 0]]
    assert labels.tolist() == [[-100, -100, -100, 7, 9, -100]]


def test_tools_need_every_row_on_policy(tmp_path, tok, dataset):
    student, teacher = _pair(tok)
    with pytest.raises(ValueError, match="tools= runs TRL's tool-calling loop .* set lmbda=1.0"):
        DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=_args(DistillationConfig, tmp_path, lmbda=0.5),
            train_dataset=dataset,
            processing_class=tok,
            tools=[len],
        )


def test_a_tool_call_turn_after_the_first_is_sampled_plainly(tmp_path, tok, dataset):
    # TRL's tool loop calls `_generate_single_turn` again for the rows that made a tool call (fewer rows): the mixed
    # batch fills its rows on the first call only, later turns are the student's own continuations.
    from trl_opd.trainers.mixing import MixedBatch

    student, teacher = _pair(tok)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(DistillationConfig, tmp_path),
        train_dataset=dataset,
        processing_class=tok,
    )
    trainer.model.train()
    rows = [{"prompt": "1+1="}, {"prompt": "2+2="}, {"prompt": "3+3="}]
    prompt_ids = trainer.prompt_token_ids([r["prompt"] for r in rows])
    trainer._mixed = MixedBatch(rows, [True, True, True])
    first = trainer._generate_single_turn(prompt_ids, None, {})
    second = trainer._generate_single_turn(prompt_ids[:2], None, {})
    assert len(first) == 3 and len(second) == 2
    assert trainer._mixed is None
