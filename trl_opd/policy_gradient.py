r"""Reverse KL as reinforcement learning: MiniLLM's per-token rewards and advantages (the tutorial's chapter 5).

For a completion y sampled from the student q = p_θ, the sequence-level reverse KL is

    KL(q ‖ p_T) = E_{y~q} [ Σ_t log q(y_t | y<t) − log p_T(y_t | y<t) ].

Its gradient is a policy gradient with per-token reward ``r_t = log p_T(y_t | y<t) − log q(y_t | y<t)``:

    −∇ KL = E_{y~q} [ Σ_t ∇ log q(y_t | y<t) · A_t ],     A_t = Σ_{s≥t} γ^{s−t} r_s   (γ = 1: exact)

(the term ``E[−∇ log q]`` vanishes because a score function has mean zero). Minimising
``−Σ_t A_t.detach() · log q(y_t)`` is therefore an unbiased estimator of ∇KL for γ = 1, without length
normalisation, with any baseline that does not depend on the sampled token.

Reward extrapolation:

* external rewards (verifiers): ``R = log P_T(y) + β · R_ext(y)``: β·R_ext is added to the last token's reward;
* ExOPD / G-OPD: ``r_t = λ·(log p_T − log π_ref) − (log q − log π_ref)``; λ = 1 gives back ``log p_T − log q``;
  λ > 1 pushes the student past the teacher along the direction from the reference to the teacher.
"""

from __future__ import annotations

import torch

from .divergences.ops import LOG_PROB_FLOOR


def token_rewards(
    teacher_logps: torch.Tensor,
    student_logps: torch.Tensor,
    ref_logps: torch.Tensor | None = None,
    extrapolation_lambda: float = 1.0,
) -> torch.Tensor:
    """Per-token reward ``log p_T − log q``, or ExOPD's ``λ(log p_T − log π_ref) − (log q − log π_ref)``.

    ``log p_T`` is floored at log of float32's smallest normal number (−87.34, as in the reverse KL of
    :mod:`trl_opd.divergences.rkl`): a sampled token the teacher gives zero probability would make the reward −inf.
    """
    teacher_logps = teacher_logps.clamp(min=LOG_PROB_FLOOR)
    if extrapolation_lambda == 1.0 or ref_logps is None:
        if extrapolation_lambda != 1.0:
            raise ValueError("extrapolation_lambda != 1 needs the reference model's log-probabilities.")
        return teacher_logps - student_logps
    return extrapolation_lambda * (teacher_logps - ref_logps) - (student_logps - ref_logps)


def rewards_to_go(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    length_normalization: bool = False,
    exclude_current: bool = False,
) -> torch.Tensor:
    """``A_t = Σ_{s ≥ t} γ^{s−t} r_s`` over the masked tokens of each row (``s > t`` with ``exclude_current``).

    With ``length_normalization`` each sum is divided by the number of tokens it covers (1 when it covers none).
    Positions outside ``mask`` get 0.
    """
    mask = mask.to(rewards.dtype)
    r = rewards * mask
    out = torch.zeros_like(r)
    counts = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    running_count = torch.zeros_like(r[:, 0])
    for t in range(r.size(1) - 1, -1, -1):
        # `running` holds Σ_{s > t} γ^{s−t−1} r_s before this step's update.
        later, later_count = gamma * running, running_count
        running = r[:, t] + later
        running_count = mask[:, t] + later_count
        out[:, t] = later if exclude_current else running
        counts[:, t] = later_count if exclude_current else running_count
    if length_normalization:
        out = out / counts.clamp(min=1.0)
    return out * mask


def minillm_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    length_normalization: bool = True,
    baseline: str = "mean",
    whiten: bool = False,
    exclude_current: bool = False,
    terminal_rewards: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token advantages ``(B, T)``: rewards-to-go of ``rewards`` (plus ``terminal_rewards`` at each row's last
    masked token), minus the mean over masked tokens (``baseline="mean"``), optionally divided by their std."""
    rewards = rewards * mask
    if terminal_rewards is not None:
        lengths = mask.sum(1).long()
        last = (lengths - 1).clamp(min=0)
        rows = torch.arange(rewards.size(0), device=rewards.device)
        rewards = rewards.clone()
        rewards[rows, last] += terminal_rewards.to(rewards.dtype) * (lengths > 0)
    advantages = rewards_to_go(rewards, mask, gamma, length_normalization, exclude_current)
    valid = mask.bool()
    if baseline == "mean" and valid.any():
        advantages = (advantages - advantages[valid].mean()) * mask
    elif baseline not in ("mean", "none"):
        raise ValueError(f"Unknown baseline {baseline!r}; choose 'mean' or 'none'.")
    if whiten and valid.sum() > 1:
        advantages = advantages / (advantages[valid].std() + 1e-6)
    return advantages


def reinforce_gradient_magnitude(reward: float, probability: float) -> float:
    """The tutorial's |∇J| = |r| · |∂ log p / ∂p| = |r| / p for one sampled token of probability ``p``."""
    return abs(reward) / probability
