"""MiniLLM: the tutorial's numbers, exactness of the policy-gradient estimator, mode seeking, and the trainer."""

import itertools
import math

import pytest
import torch

from trl_opd import MiniLLMConfig, MiniLLMTrainer
from trl_opd.evaluation import mean_divergence, mean_token_log_prob, sample
from trl_opd.hooks import FlawedPrefixFilter, TokenImportance
from trl_opd.policy_gradient import minillm_advantages, reinforce_gradient_magnitude, rewards_to_go, token_rewards
from trl_opd.tiny import addition_dataset, char_tokenizer, tiny_llama, train_causal_lm


# ------------------------------------------------------------------------------------------- the tutorial's numbers


def test_seed_therefore_and_however():
    # "therefore": p_theta = 0.3, p_T = 0.7
    r = token_rewards(torch.tensor(math.log(0.7)), torch.tensor(math.log(0.3))).item()
    assert r == pytest.approx(0.8473, abs=1e-4)
    p = torch.tensor(0.3, requires_grad=True)
    torch.log(p).backward()
    assert p.grad.item() == pytest.approx(1 / 0.3)  # the score's magnitude 3.33 (w.r.t. the probability)
    assert reinforce_gradient_magnitude(r, 0.3) == pytest.approx(2.824, abs=1e-3)  # tutorial: 2.82
    # "however": p_theta = 0.4, p_T = 0.02
    r = token_rewards(torch.tensor(math.log(0.02)), torch.tensor(math.log(0.4))).item()
    assert r == pytest.approx(-2.9957, abs=1e-4)  # tutorial: -2.99
    # 2.9957 / 0.4 = 7.489; the tutorial's 7.48 comes from the rounded reward (2.99 / 0.4 = 7.475)
    assert reinforce_gradient_magnitude(r, 0.4) == pytest.approx(7.489, abs=1e-3)
    # at equilibrium p_theta = p_T the reward is zero
    assert token_rewards(torch.tensor(math.log(0.7)), torch.tensor(math.log(0.7))).item() == 0.0


def test_rewards_to_go_by_hand():
    r, m = torch.tensor([[1.0, 2.0, 3.0, 0.0]]), torch.tensor([[1, 1, 1, 0]])
    assert rewards_to_go(r, m).tolist() == [[6, 5, 3, 0]]
    assert rewards_to_go(r, m, exclude_current=True).tolist() == [[5, 3, 0, 0]]
    assert rewards_to_go(r, m, gamma=0.5).tolist() == [[2.75, 3.5, 3.0, 0.0]]
    assert rewards_to_go(r, m, length_normalization=True).tolist() == [[2.0, 2.5, 3.0, 0.0]]
    a = minillm_advantages(
        r, m.float(), length_normalization=False, baseline="none", terminal_rewards=torch.tensor([10.0])
    )
    assert a.tolist() == [[16, 15, 13, 0]]
    centred = minillm_advantages(r, m.float(), length_normalization=False, baseline="mean")
    assert centred[m.bool()].mean().item() == pytest.approx(0.0, abs=1e-6) and centred[0, 3] == 0


def test_extrapolated_reward():
    t, s, ref = torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-3.0])
    assert token_rewards(t, s, ref, 1.0).item() == pytest.approx(1.0)  # λ = 1: log p_T − log q
    assert token_rewards(t, s, ref, 2.0).item() == pytest.approx(2 * 2.0 - 1.0)  # λ(T − ref) − (q − ref)
    with pytest.raises(ValueError, match="reference model"):
        token_rewards(t, s, None, 2.0)


# --------------------------------------------------------------- the estimator on an enumerable problem (V=3, T=2)

V, T = 3, 2


def tabular_log_probs(theta0, theta1, y):
    """log q(y_0), log q(y_1 | y_0) of a tabular autoregressive policy (theta1 is conditioned on y_0)."""
    return torch.stack([theta0.log_softmax(-1)[y[0]], theta1[y[0]].log_softmax(-1)[y[1]]])


def all_sequences():
    return list(itertools.product(range(V), repeat=T))


def sequence_log_prob(theta0, theta1, y):
    return tabular_log_probs(theta0, theta1, y).sum()


def exact_reverse_kl(theta0, theta1, teacher):
    total = 0.0
    for y in all_sequences():
        lq = sequence_log_prob(theta0, theta1, y)
        total = total + lq.exp() * (lq - sequence_log_prob(*teacher, y))
    return total


def estimator_gradient(theta0, theta1, teacher, y, single_step=False):
    """∇ of the MiniLLM surrogate for one sampled y: −Σ_t A_t·log q(y_t) (+ the exact per-step reverse KL)."""
    lq = tabular_log_probs(theta0, theta1, y)
    lt = tabular_log_probs(*teacher, y)
    rewards = token_rewards(lt.detach(), lq.detach()).unsqueeze(0)
    a = minillm_advantages(
        rewards, torch.ones(1, T), length_normalization=False, baseline="none", exclude_current=single_step
    )
    surrogate = -(a.squeeze(0) * lq).sum()
    if single_step:
        steps = [
            (theta0.log_softmax(-1), teacher[0].log_softmax(-1)),
            (theta1[y[0]].log_softmax(-1), teacher[1][y[0]].log_softmax(-1)),
        ]
        surrogate = surrogate + sum((s.exp() * (s - t)).sum() for s, t in steps)
    return torch.autograd.grad(surrogate, [theta0, theta1])


@pytest.mark.parametrize("single_step", [False, True])
def test_policy_gradient_expectation_equals_the_exact_reverse_kl_gradient(single_step):
    torch.manual_seed(0)
    theta0, theta1 = torch.randn(V, requires_grad=True), torch.randn(V, V, requires_grad=True)
    teacher = (torch.randn(V), torch.randn(V, V))
    exact = torch.autograd.grad(exact_reverse_kl(theta0, theta1, teacher), [theta0, theta1])
    expected = [torch.zeros_like(theta0), torch.zeros_like(theta1)]
    for y in all_sequences():  # E_y~q[estimator], computed exactly by enumeration
        weight = sequence_log_prob(theta0, theta1, y).exp().detach()
        for acc, g in zip(expected, estimator_gradient(theta0, theta1, teacher, y, single_step), strict=True):
            acc += weight * g
    for e, x in zip(expected, exact, strict=True):
        torch.testing.assert_close(e, x, atol=1e-5, rtol=1e-5)


def test_sampled_average_matches_the_exact_gradient():
    torch.manual_seed(1)
    theta0, theta1 = torch.randn(V, requires_grad=True), torch.randn(V, V, requires_grad=True)
    teacher = (torch.randn(V), torch.randn(V, V))
    exact = torch.cat(
        [g.flatten() for g in torch.autograd.grad(exact_reverse_kl(theta0, theta1, teacher), [theta0, theta1])]
    )
    probs = torch.stack([sequence_log_prob(theta0, theta1, y).exp() for y in all_sequences()]).detach()
    draws = torch.multinomial(probs, 20000, replacement=True, generator=torch.Generator().manual_seed(2))
    per_sequence = [
        torch.cat([g.flatten() for g in estimator_gradient(theta0, theta1, teacher, y)]) for y in all_sequences()
    ]
    average = torch.stack([per_sequence[i] for i in draws.tolist()]).mean(0)
    assert (average - exact).norm() / exact.norm() < 0.05  # Monte-Carlo error at 20k samples, fixed seed


def test_mode_seeking_on_a_bimodal_teacher():
    """A factorised student (q(y) = q0(y0)·q1(y1)) cannot represent a teacher split between "ab" and "ba":
    MiniLLM's sampled policy gradient locks on one mode; forward KL spreads over all four combinations."""
    a, b = 0, 1
    teacher_seq = torch.full((V, V), 0.1 / 7)
    teacher_seq[a, b] = teacher_seq[b, a] = 0.45
    log_teacher = teacher_seq.log()

    def train(use_reverse_kl):
        torch.manual_seed(0)
        theta = torch.zeros(2, V, requires_grad=True)
        with torch.no_grad():
            theta += 0.01 * torch.randn(2, V)
        optimizer = torch.optim.Adam([theta], lr=0.05)
        generator = torch.Generator().manual_seed(3)
        for _ in range(400):
            log_q = theta.log_softmax(-1)
            if use_reverse_kl:  # sampled MiniLLM estimator, 16 sequences per step, baseline = batch mean
                y = torch.multinomial(log_q.exp().detach(), 16, replacement=True, generator=generator).T  # (16, 2)
                lq = torch.stack([log_q[0, y[:, 0]], log_q[1, y[:, 1]]], dim=1)
                first = log_teacher[y[:, 0], :].logsumexp(-1)  # log p_T(y0)
                lt = torch.stack([first, log_teacher[y[:, 0], y[:, 1]] - first], dim=1)  # and log p_T(y1 | y0)
                adv = minillm_advantages(token_rewards(lt, lq.detach()), torch.ones(16, 2), length_normalization=False)
                loss = -(adv * lq).sum(1).mean()
            else:  # exact forward KL of the sequence distribution
                log_q_seq = log_q[0][:, None] + log_q[1][None, :]
                loss = (teacher_seq * (log_teacher - log_q_seq)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        q = theta.softmax(-1).detach()
        return q[0][:, None] * q[1][None, :]

    q_rkl, q_fkl = train(True), train(False)
    assert max(q_rkl[a, b], q_rkl[b, a]) > 0.7  # one mode
    assert max(q_fkl[a, b], q_fkl[b, a]) < 0.3 and (q_fkl[a, a] + q_fkl[b, b]) > 0.3  # covering, hallucinating


# ------------------------------------------------------------------------------------------------------ the trainer


@pytest.fixture(scope="module")
def dataset():
    return addition_dataset().rename_column("completion", "answer")


@pytest.fixture(scope="module")
def teacher(tok, dataset):
    model = tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=64)
    train_causal_lm(model, tok, [r["prompt"] + r["answer"] for r in dataset], steps=150)
    return model


def config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=2,
        max_completion_length=6,
        learning_rate=3e-3,
        bf16=False,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return MiniLLMConfig(**values)


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
    with pytest.raises(ValueError, match="expected a `prompt` column"):
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


def test_right_padding_is_refused(tmp_path, dataset, teacher):
    tok = char_tokenizer()
    tok.padding_side = "right"
    with pytest.raises(ValueError, match="padding_side = 'left'"):
        MiniLLMTrainer(
            model=tiny_llama(len(tok), tokenizer=tok),
            teacher_model=teacher,
            args=config(tmp_path),
            train_dataset=dataset,
            processing_class=tok,
        )
