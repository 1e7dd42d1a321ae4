"""The policy-gradient math of MiniLLM (trl_opd.policy_gradient): the tutorial's numbers, rewards-to-go by hand, the
estimator's exactness on an enumerable problem, and mode seeking on a bimodal teacher."""

import itertools
import math

import pytest
import torch

from trl_opd.policy_gradient import minillm_advantages, reinforce_gradient_magnitude, rewards_to_go, token_rewards


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
