"""GKDTrainer: per-sample mixing, loss normalisation, datasets, vocabularies, PEFT/QLoRA and an end-to-end run."""

import logging

import pytest
import torch
from datasets import Dataset
from helpers import make_config, make_trainer

from trl_opd import GKDTrainer, per_token_divergence
from trl_opd.tiny import addition_dataset, tiny_llama, train_causal_lm
from trl_opd.trainers.mixing import MixedBatch, on_policy_mask


class CountingGenerate:
    """Wraps ``model.generate`` and records how many rows each call generates."""

    def __init__(self, model):
        self.original, self.rows = model.generate, []
        model.generate = self

    def __call__(self, *args, **kwargs):
        self.rows.append(kwargs["input_ids"].shape[0])
        return self.original(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Per-sample mixing
# ---------------------------------------------------------------------------------------------------------------------


def test_on_policy_mask_frequency_and_endpoints():
    flags = on_policy_mask(20000, 0.3, seed=0, step=5, process_index=0, num_processes=1)
    assert abs(sum(flags) / len(flags) - 0.3) < 0.015
    assert on_policy_mask(7, 0.0, 0, 0, 0, 1) == [False] * 7
    assert on_policy_mask(7, 1.0, 0, 0, 0, 1) == [True] * 7


def test_on_policy_mask_is_the_same_global_draw_on_every_process():
    whole = on_policy_mask(16, 0.5, seed=3, step=11, process_index=0, num_processes=1)
    slices = [on_policy_mask(4, 0.5, seed=3, step=11, process_index=p, num_processes=4) for p in range(4)]
    assert sum(slices, []) == whole
    assert on_policy_mask(16, 0.5, seed=3, step=12, process_index=0, num_processes=1) != whole
    assert on_policy_mask(16, 0.5, seed=3, step=11, process_index=0, num_processes=1) == whole


def test_only_on_policy_rows_are_generated_and_others_use_the_dataset(tmp_path, tok, dataset):
    trainer = make_trainer(tmp_path, tok, dataset, lmbda=0.5)
    counter = CountingGenerate(trainer.model)
    rows = [dataset[i] for i in range(8)]
    mask = [True, False, False, True, False, True, False, False]
    prompt_ids = [tok(r["prompt"])["input_ids"] for r in rows]
    trainer._mixed = MixedBatch(rows, mask)
    completions = trainer._generate_single_turn(prompt_ids, None, {})
    trainer._mixed = None
    assert counter.rows == [3]
    for row, flag, ids in zip(rows, mask, completions, strict=True):
        if not flag:
            assert ids == tok(row["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert 1 <= len(ids) <= 6


def test_pure_off_policy_never_generates(tmp_path, tok, dataset):
    trainer = make_trainer(tmp_path, tok, dataset, lmbda=0.0, max_steps=2)
    counter = CountingGenerate(trainer.model)
    trainer.train()
    assert counter.rows == []
    logs = [log for log in trainer.state.log_history if "on_policy_fraction" in log]
    assert [log["on_policy_fraction"] for log in logs] == [0.0, 0.0]


def test_seq_kd_off_policy_rows_come_from_the_teacher(tmp_path, tok, dataset):
    trainer = make_trainer(tmp_path, tok, dataset, lmbda=0.0, seq_kd=True, max_steps=1)
    student_calls, teacher_calls = CountingGenerate(trainer.model), CountingGenerate(trainer.teacher_model)
    trainer.train()
    assert student_calls.rows == [] and teacher_calls.rows == [4]


def test_schedule_drives_logged_lambda(tmp_path, tok, dataset):
    trainer = make_trainer(tmp_path, tok, dataset, lmbda_schedule="three_phase", max_steps=5)
    trainer.train()
    logged = [log["lmbda"] for log in trainer.state.log_history if "lmbda" in log]
    schedule = trainer.args.lambda_schedule()
    assert logged == pytest.approx([schedule.at_step(step, 5) for step in range(5)])
    assert logged[0] == 0.0 and logged[-1] == 1.0


def test_logged_metrics(tmp_path, tok, dataset):
    trainer = make_trainer(tmp_path, tok, dataset, max_steps=1)
    trainer.train()
    log = trainer.state.log_history[0]
    for key in ("loss", "lmbda", "on_policy_fraction", "num_tokens_trained", "entropy"):
        assert key in log, key
    assert log["num_tokens_trained"] > 0


# ---------------------------------------------------------------------------------------------------------------------
# Loss: value, temperature, normalisation by the tokens actually trained on
# ---------------------------------------------------------------------------------------------------------------------


def reference_loss_sum(trainer, inputs):
    """Σ over completion tokens of the dense per-token divergence, from full logits (independent of the trainer)."""
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    k = inputs["completion_ids"].size(1)
    with torch.no_grad():
        s = trainer.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -k - 1 : -1]
        t = trainer.teacher_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -k - 1 : -1]
    d = per_token_divergence(s, t, trainer.args.divergence, trainer.args.beta, trainer.args.temperature)
    mask = inputs["completion_mask"].bool()
    return d[mask].sum().item(), int(mask.sum())


@pytest.mark.parametrize(
    "divergence,beta,temperature", [("jsd", 0.5, 1.0), ("fkl", 0.5, 2.0), ("rkl", 0.5, 0.7), ("tvd", 0.5, 1.0)]
)
def test_loss_is_divergence_summed_over_all_trained_tokens_of_the_generation_batch(
    tmp_path, tok, dataset, divergence, beta, temperature
):
    # λ = 1: on-policy completions are longer than the dataset's (1-2 characters), so a divisor taken from the
    # dataset's labels (TRL's experimental GKD) would differ from the true token count checked here.
    trainer = make_trainer(
        tmp_path,
        tok,
        dataset,
        lmbda=1.0,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=3,
        divergence=divergence,
        beta=beta,
        temperature=temperature,
    )
    trainer.model.train()
    batch = [dataset[i] for i in range(6)]
    micro_batches = [trainer._prepare_inputs(batch) for _ in range(2)]
    for _ in range(2):
        trainer._step += 1
    total_tokens = sum(int(mb["completion_mask"].sum()) for mb in micro_batches)
    dataset_tokens = sum(len(r["completion"]) + 1 for r in batch)
    assert int(micro_batches[0]["num_items_in_batch"]) == total_tokens != dataset_tokens
    ours, reference = 0.0, 0.0
    for mb in micro_batches:
        ours += trainer.compute_loss(trainer.model, mb).item()
        reference += reference_loss_sum(trainer, mb)[0]
    assert ours == pytest.approx(reference / total_tokens, rel=1e-4, abs=1e-7)


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tok, dataset):
    # Off-policy batches are deterministic: 2 x 2 accumulated must equal one batch of 4 (same rows).
    rows = [dataset[i] for i in range(4)]
    big = make_trainer(tmp_path / "a", tok, dataset, lmbda=0.0, per_device_train_batch_size=4)
    small = make_trainer(
        tmp_path / "b", tok, dataset, lmbda=0.0, per_device_train_batch_size=2, gradient_accumulation_steps=2
    )
    big.model.train(), small.model.train()
    loss_big = big.compute_loss(big.model, big._prepare_inputs(rows)).item()
    first = small._prepare_inputs(rows)
    small._step += 1
    second = small._prepare_inputs(rows)
    loss_small = small.compute_loss(small.model, first).item() + small.compute_loss(small.model, second).item()
    assert loss_small == pytest.approx(loss_big, rel=1e-5)


def test_nan_logits_give_a_clear_error(tmp_path, tok, dataset):
    trainer = make_trainer(tmp_path, tok, dataset, lmbda=0.0)
    with torch.no_grad():
        trainer.teacher_model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="not finite"):
        trainer.train()


# ---------------------------------------------------------------------------------------------------------------------
# Datasets and bad input
# ---------------------------------------------------------------------------------------------------------------------


def test_messages_dataset_is_split_into_prompt_and_completion(tmp_path, tok):
    ds = Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": f"{a}+1="}, {"role": "assistant", "content": str(a + 1)}]}
            for a in range(8)
        ]
    )
    trainer = make_trainer(tmp_path, tok, ds, lmbda=0.0, max_steps=1)
    assert trainer.train_dataset.column_names == ["prompt", "completion"]
    row = trainer.train_dataset[0]
    prompt_ids = tok.apply_chat_template(row["prompt"], add_generation_prompt=True)["input_ids"]
    ids = trainer._tokenize_completion(row["prompt"], row["completion"], prompt_ids)
    assert tok.decode(ids) == row["completion"][0]["content"] + "<eos>"
    trainer.train()


def test_missing_columns_are_named(tmp_path, tok):
    with pytest.raises(ValueError, match=r"columns \['question'\].*`prompt` and `completion`, or `messages`"):
        make_trainer(tmp_path, tok, Dataset.from_list([{"question": "1+1="}]))
    with pytest.raises(ValueError, match="A `completion` is needed"):
        make_trainer(tmp_path, tok, Dataset.from_list([{"prompt": "1+1="}]), lmbda=0.5)


def test_prompt_only_dataset_is_fine_when_always_on_policy(tmp_path, tok):
    trainer = make_trainer(tmp_path, tok, Dataset.from_list([{"prompt": f"{a}+1="} for a in range(8)]), lmbda=1.0)
    trainer.train()
    assert trainer.state.global_step == 2


def test_empty_completions_are_dropped_and_counted(tmp_path, tok, caplog):
    rows = [{"prompt": f"{a}+1=", "completion": str(a + 1) if a % 3 else "  "} for a in range(9)]
    with caplog.at_level(logging.WARNING, logger="trl_opd.data"):
        trainer = make_trainer(tmp_path, tok, Dataset.from_list(rows), lmbda=0.5)
    assert len(trainer.train_dataset) == 6
    assert "dropped 3 of 9 rows whose completion is empty" in caplog.text
    with pytest.raises(ValueError, match="Every row of train_dataset has an empty completion"):
        make_trainer(tmp_path, tok, Dataset.from_list([{"prompt": "1=", "completion": ""}]), lmbda=0.5)


def test_vocabulary_mismatch_is_refused(tmp_path, tok, dataset):
    teacher = tiny_llama(len(tok) - 9, seed=2)
    with pytest.raises(ValueError, match="Vocabulary mismatch: the tokenizer has 49 tokens"):
        make_trainer(tmp_path, tok, dataset, teacher=teacher)


def test_heads_padded_past_the_tokenizer_are_aligned(tmp_path, tok, dataset):
    # Like Qwen2.5-7B (152064 rows) teaching 1.5B (151936): same tokenizer, different padding of the head.
    teacher = tiny_llama(len(tok) + 15, tokenizer=tok, seed=2)
    trainer = make_trainer(tmp_path, tok, dataset, teacher=teacher, lmbda=0.5)
    assert trainer.vocab_size == len(tok)
    trainer.train()
    assert trainer.state.global_step == 2


def test_config_refuses_bad_values(tmp_path):
    for bad, match in [
        (dict(lmbda=1.5), "lmbda must be in"),
        (dict(divergence="kl"), "'fkl', 'rkl', 'jsd', 'tvd'"),
        (dict(lmbda_schedule="cosine"), "'constant', 'linear', 'three_phase'"),
        (dict(beta=-0.1), "beta must be in"),
    ]:
        with pytest.raises(ValueError, match=match):
            make_config(tmp_path, **bad)


# ---------------------------------------------------------------------------------------------------------------------
# PEFT: LoRA and QLoRA (bitsandbytes 4-bit on CPU)
# ---------------------------------------------------------------------------------------------------------------------


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")


def lora_b_norm(model):
    return sum(p.detach().float().norm().item() for n, p in model.named_parameters() if "lora_B" in n)


def test_lora_trains_adapters_only(tmp_path, tok, dataset):
    student = tiny_llama(len(tok), tokenizer=tok, seed=1)
    trainer = GKDTrainer(
        model=student,
        teacher_model=tiny_llama(len(tok), tokenizer=tok, seed=2),
        args=make_config(tmp_path, learning_rate=1e-2),
        train_dataset=dataset,
        processing_class=tok,
        peft_config=lora_config(),
    )
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert lora_b_norm(trainer.model) == 0.0
    trainer.train()
    assert lora_b_norm(trainer.model) > 0.0


def test_qlora_gradients_survive_an_evaluation_pass(tmp_path, tok, dataset):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    student_dir = tmp_path / "student"
    tiny_llama(len(tok), tokenizer=tok, seed=1, hidden_size=64).save_pretrained(student_dir)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    trainer = GKDTrainer(
        model=str(student_dir),
        teacher_model=tiny_llama(len(tok), tokenizer=tok, seed=2),
        args=make_config(tmp_path, learning_rate=1e-2, max_steps=2),
        train_dataset=dataset,
        eval_dataset=dataset.select(range(8)),
        processing_class=tok,
        peft_config=lora_config(),
        quantization_config=quantization,
    )
    layers = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    trainer.evaluate()  # eval-mode, no-grad generation: where the CPU repacking trap used to strike
    trainer.train()
    assert lora_b_norm(trainer.model) > 0.0


# ---------------------------------------------------------------------------------------------------------------------
# End to end: a briefly trained teacher, a student distilled on-policy
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conversational", [False, True])
def test_distillation_lowers_the_divergence_on_the_students_own_samples(tmp_path, tok, conversational):
    dataset = addition_dataset(conversational=conversational)
    teacher = tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=64)
    texts = [
        tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
        if conversational
        else r["prompt"] + r["completion"]
        for r in dataset
    ]
    losses = train_causal_lm(teacher, tok, texts, steps=150)
    assert losses[-1] < losses[0] / 2
    trainer = make_trainer(
        tmp_path,
        tok,
        dataset,
        teacher=teacher,
        lmbda=0.5,
        max_steps=40,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        per_device_eval_batch_size=16,
        logging_steps=10,
    )
    trainer.eval_dataset = dataset.select(range(32))
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("use_lora", [False, True])
def test_model_paths_and_gradient_checkpointing(tmp_path, tok, dataset, use_lora):
    # TRL's defaults: models given as local paths, gradient checkpointing on.
    student_dir, teacher_dir = tmp_path / "student", tmp_path / "teacher"
    tiny_llama(len(tok), tokenizer=tok, seed=1).save_pretrained(student_dir)
    tiny_llama(len(tok), tokenizer=tok, seed=2).save_pretrained(teacher_dir)
    trainer = GKDTrainer(
        model=str(student_dir),
        teacher_model=str(teacher_dir),
        processing_class=tok,
        train_dataset=dataset,
        args=make_config(
            tmp_path, gradient_checkpointing=True, learning_rate=1e-2, teacher_model_init_kwargs={"dtype": "float32"}
        ),
        peft_config=lora_config() if use_lora else None,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    teacher_before = [p.detach().clone() for p in trainer.teacher_model.parameters()]
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, trainer.teacher_model.parameters(), strict=True))


def test_streamed_rows_with_empty_completions_are_sampled_instead_and_counted(tmp_path, tok, caplog):
    rows = [{"prompt": f"{a}+1=", "completion": "" if a % 2 else str(a + 1)} for a in range(16)]
    stream = Dataset.from_list(rows).to_iterable_dataset()
    with caplog.at_level(logging.WARNING, logger="trl_opd.trainers.gkd"):
        trainer = make_trainer(tmp_path, tok, stream, lmbda=0.0, max_steps=2, per_device_train_batch_size=8)
        trainer.train()
    resampled = [log["empty_completions_resampled"] for log in trainer.state.log_history if "lmbda" in log]
    fractions = [log["on_policy_fraction"] for log in trainer.state.log_history if "lmbda" in log]
    assert resampled == [4.0, 4.0] and fractions == [0.5, 0.5]
    assert "4 off-policy rows have an empty completion" in caplog.text


def test_missing_teacher_and_wrong_config_type_are_refused(tmp_path, tok, dataset):
    student = tiny_llama(len(tok), tokenizer=tok, seed=1)
    with pytest.raises(ValueError, match="GKDTrainer needs a teacher"):
        GKDTrainer(model=student, args=make_config(tmp_path), train_dataset=dataset, processing_class=tok)
    from trl import DistillationConfig

    with pytest.raises(TypeError, match=r"args must be a trl_opd.DistillationConfig .* got trl\.trainer"):
        GKDTrainer(
            model=student,
            teacher_model=student,
            args=DistillationConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True),
            train_dataset=dataset,
            processing_class=tok,
        )
    with pytest.raises(ValueError, match="teacher model is already instantiated"):
        make_trainer(tmp_path, tok, dataset, teacher_model_init_kwargs={"dtype": "float32"})
