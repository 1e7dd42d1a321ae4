"""The MiniLLM trainer (its policy-gradient math is in test_policy_gradient.py)."""

import pytest
import torch
from helpers import make_minillm_config as config
from helpers import record_generate_masks

from trl_opd import MiniLLMTrainer
from trl_opd.evaluation import mean_divergence, mean_token_log_prob, sample
from trl_opd.hooks import FlawedPrefixFilter, TokenImportance
from trl_opd.policy_gradient import minillm_advantages
from trl_opd.tiny import addition_dataset, char_tokenizer, tiny_llama, train_causal_lm


# ------------------------------------------------------------------------------------------------------ the trainer


@pytest.fixture(scope="module")
def dataset():
    return addition_dataset().rename_column("completion", "answer")


@pytest.fixture(scope="module")
def teacher(tok, dataset):
    model = tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=64)
    train_causal_lm(model, tok, [r["prompt"] + r["answer"] for r in dataset], steps=150)
    return model


def accuracy(prompts, completions, answer, **kwargs):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer, strict=True)]


def starts_with_digit(prompts, completions, **kwargs):
    return [1.0 if c[:1].isdigit() else 0.0 for c in completions]


def logged(trainer, key):
    return [log[key] for log in trainer.state.log_history if key in log]


def reverse_kl_on_own_samples(trainer, tok, dataset):
    prompts = [tok(r["prompt"])["input_ids"] for r in dataset.select(range(32))]
    torch.manual_seed(5)
    completions = sample(
        trainer.model, prompts, tok.pad_token_id, [tok.eos_token_id], max_new_tokens=6, do_sample=True, top_k=0
    )
    return mean_divergence(trainer.model, trainer.teacher_model, prompts, completions, "rkl")


def test_the_config_is_left_as_given(tmp_path, tok, dataset, teacher):
    args = config(tmp_path)
    given = vars(args).copy()
    MiniLLMTrainer(model=tiny_llama(len(tok), tokenizer=tok, seed=1), teacher_model=teacher, args=args,
                   train_dataset=dataset, processing_class=tok)  # fmt: skip
    assert vars(args) == given


def test_training_lowers_the_reverse_kl_on_the_students_own_samples(tmp_path, tok, dataset, teacher):
    trainer = MiniLLMTrainer(
        model=tiny_llama(len(tok), tokenizer=tok, seed=1),
        teacher_model=teacher,
        args=config(tmp_path, max_steps=40),
        train_dataset=dataset,
        processing_class=tok,
    )
    before = reverse_kl_on_own_samples(trainer, tok, dataset)
    trainer.train()
    after = reverse_kl_on_own_samples(trainer, tok, dataset)
    assert after < 0.85 * before, (before, after)
    for key in (
        "rewards/teacher_logprob/mean",
        "reverse_kl",
        "entropy",
        "advantages/mean",
        "advantages/std",
        "rewards/no_external_reward/mean",
    ):
        assert logged(trainer, key), key


def test_external_rewards_are_the_weighted_verifier_sum(tmp_path, tok, dataset, teacher):
    args = config(tmp_path, max_steps=1, reward_weights=[1.0, 2.0])
    trainer = MiniLLMTrainer(
        model=tiny_llama(len(tok), tokenizer=tok, seed=1),
        teacher_model=teacher,
        reward_funcs=[starts_with_digit, accuracy],
        args=args,
        train_dataset=dataset,
        processing_class=tok,
    )
    trainer.model.train()
    rows = [dataset[i // 4] for i in range(8)]
    inputs = trainer._generate_and_score_completions(rows)
    mask = inputs["completion_mask"].bool()
    texts = tok.batch_decode(
        [c[m] for c, m in zip(inputs["completion_ids"], mask, strict=True)], skip_special_tokens=True
    )
    expected = [float(t[:1].isdigit()) + 2.0 * float(t.strip() == r["answer"]) for t, r in zip(texts, rows)]
    assert trainer._external_rewards(8, mask.device).tolist() == pytest.approx(expected)
    for key in ("rewards/starts_with_digit/mean", "rewards/accuracy/mean", "rewards/external/mean"):
        assert trainer._metrics["train"][key], key


def test_external_reward_shifts_every_advantage_by_beta_times_r_ext():
    rewards = torch.tensor([[0.5, -1.0, 0.25], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    base = minillm_advantages(rewards, mask, length_normalization=False, baseline="none")
    shifted = minillm_advantages(
        rewards, mask, length_normalization=False, baseline="none", terminal_rewards=torch.tensor([2.0, -3.0])
    )
    assert (shifted - base).tolist() == [[2.0, 2.0, 2.0], [-3.0, 0.0, 0.0]]


def test_extrapolation_with_peft_uses_the_adapter_disabled_model(tmp_path, tok, dataset, teacher):
    from peft import LoraConfig

    args = config(tmp_path, extrapolation_lambda=1.5, max_steps=2)
    trainer = MiniLLMTrainer(
        model=tiny_llama(len(tok), tokenizer=tok, seed=1),
        teacher_model=teacher,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    assert trainer.extrapolation_ref is None  # no copy of the model
    trainer.train()
    assert logged(trainer, "rewards/token_reward/mean")


def test_extrapolation_without_peft_keeps_a_frozen_copy(tmp_path, tok, dataset, teacher):
    trainer = MiniLLMTrainer(
        model=tiny_llama(len(tok), tokenizer=tok, seed=1),
        teacher_model=teacher,
        args=config(tmp_path, extrapolation_lambda=2.0),
        train_dataset=dataset,
        processing_class=tok,
    )
    before = [p.clone() for p in trainer.extrapolation_ref.parameters()]
    trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.extrapolation_ref.parameters(), strict=True))
    assert not torch.equal(before[0], next(trainer.model.parameters()))


def test_all_options_with_hooks_and_qlora(tmp_path, tok, dataset, teacher):
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    student_dir = tmp_path / "student"
    tiny_llama(len(tok), tokenizer=tok, seed=1, hidden_size=64).save_pretrained(student_dir)
    args = config(
        tmp_path, single_step=True, teacher_mix_alpha=0.3, extrapolation_lambda=1.2, num_iterations=2, entropy_coef=0.01
    )
    trainer = MiniLLMTrainer(
        model=str(student_dir),
        teacher_model=teacher,
        reward_funcs=[accuracy],
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
        token_importance=TokenImportance(keep_fraction=0.5),
        prefix_filter=FlawedPrefixFilter(),
    )
    trainer.train()
    for key in (
        "single_step_reverse_kl",
        "teacher_mix/importance_weight_mean",
        "tip/kept_fraction",
        "prefix_filter/rejected",
        "rewards/accuracy/mean",
    ):
        assert logged(trainer, key), key
    assert sum(p.detach().abs().sum().item() for n, p in trainer.model.named_parameters() if "lora_B" in n) > 0


def test_teacher_mixed_sampling_follows_the_teacher_as_alpha_grows(tmp_path, tok, dataset, teacher):
    trainer = MiniLLMTrainer(
        model=tiny_llama(len(tok), tokenizer=tok, seed=1),
        teacher_model=teacher,
        args=config(tmp_path, teacher_mix_alpha=0.95),
        train_dataset=dataset,
        processing_class=tok,
    )
    prompts = [tok(r["prompt"])["input_ids"] for r in dataset.select(range(32))]
    torch.manual_seed(0)
    mixed = trainer._sample_from_mixture(prompts)
    torch.manual_seed(0)
    own = sample(
        trainer.model, prompts, tok.pad_token_id, [tok.eos_token_id], max_new_tokens=6, do_sample=True, top_k=0
    )
    assert all(1 <= len(c) <= 6 for c in mixed)

    # Samples from 0.95·teacher + 0.05·student are far likelier under the teacher than the student's own samples.
    assert mean_token_log_prob(teacher, prompts, mixed) > mean_token_log_prob(teacher, prompts, own) + 1.0


def test_config_and_input_errors(tmp_path, tok, dataset, teacher):
    for bad, match in [
        (dict(gamma=0.0), "gamma must be in"),
        (dict(baseline="median"), "'mean', 'none'"),
        (dict(teacher_mix_alpha=1.0), "teacher_mix_alpha must be in"),
        (dict(beta=0.1), "must stay 0"),
        (dict(extrapolation_lambda=-1.0), "extrapolation_lambda"),
    ]:
        with pytest.raises(ValueError, match=match):
            config(tmp_path, **bad)
    with pytest.raises(ValueError, match="expected `prompt` \\(or `messages`\\)"):
        MiniLLMTrainer(
            model=tiny_llama(len(tok), tokenizer=tok),
            teacher_model=teacher,
            args=config(tmp_path),
            train_dataset=dataset.rename_column("prompt", "question"),
            processing_class=tok,
        )
    with pytest.raises(ValueError, match="Vocabulary mismatch"):
        MiniLLMTrainer(
            model=tiny_llama(len(tok), tokenizer=tok),
            teacher_model=tiny_llama(30),
            args=config(tmp_path),
            train_dataset=dataset,
            processing_class=tok,
        )


def test_right_padded_tokenizer_is_accepted_and_prompts_are_left_padded(tmp_path, dataset, teacher):
    # As TRL's GRPOTrainer: prompts are left-padded for generation whatever the tokenizer's padding_side.
    tok = char_tokenizer()
    tok.padding_side = "right"
    trainer = MiniLLMTrainer(
        model=tiny_llama(len(tok), tokenizer=tok),
        teacher_model=teacher,
        args=config(tmp_path),
        train_dataset=dataset,
        processing_class=tok,
    )
    seen = record_generate_masks(trainer)
    trainer.model.train()
    trainer._generate_and_score_completions([{"prompt": "1+1="}, {"prompt": "12+13="}] * 2)
    assert seen[0][0, 0] == 0 and seen[0][0, -1] == 1  # the short prompt is padded on the left
    assert tok.padding_side == "right"
