r"""The saturation check after round k: how far θ_k moved from θ_{k-1}.

* ``kl``: KL(θ_k ‖ θ_{k-1}) on completions sampled afresh from θ_k at temperature 1, in nats per sequence: the mean
  over samples of Σ_t KL(θ_k(·|x,y<t) ‖ θ_{k-1}(·|x,y<t)), the exact per-token KL summed along each sampled sequence.
  Its expectation is the sequence-level KL (chain rule); unlike the plain Monte-Carlo estimate it is never negative
  and has a lower variance.
* ``kl_mc``: the mean of Σ_t [log θ_k(y_t) − log θ_{k-1}(y_t)] (the tutorial's estimator).
* ``kl_per_token``: the summed KL over all sampled tokens / the number of sampled tokens.
* the DPO reward margin β · mean[(log π_k(c) − log π_{k-1}(c)) − (log π_k(r) − log π_{k-1}(r))] on the round's pairs
  comes from ``DPOTrainer.evaluate``.

The round is saturated when every enabled check is below its threshold (:func:`saturation_verdict`).
"""

from __future__ import annotations

from ...scoring import completion_divergences, completion_log_probs
from ...sharding import gathered_heads, unsharded


def saturation_verdict(
    kl: float | None, margin: float | None, saturation_kl: float | None, saturation_margin: float | None
) -> tuple[dict[str, bool], bool]:
    """Each enabled check (threshold not ``None``) and whether the round is saturated: every enabled check passes.

    ``kl < saturation_kl`` (KL(θ_k ‖ θ_{k-1}) on fresh samples) and ``margin < saturation_margin`` (the DPO reward
    margin on the round's pairs). With no check enabled a round is never saturated.
    """
    checks = {}
    if saturation_kl is not None:
        checks["kl"] = kl is not None and kl < saturation_kl
    if saturation_margin is not None:
        checks["margin"] = margin is not None and margin < saturation_margin
    return checks, bool(checks) and all(checks.values())


def kl_rows(
    policy, reference, prompt_ids, samples, pad_token_id: int, batch_size: int
) -> list[tuple[float, float, int]]:
    """``(Σ_t KL(policy ‖ reference), Σ_t [log policy(y_t) − log reference(y_t)], T)`` of each sampled completion.

    ``policy`` and ``reference`` are scored in eval mode (no dropout) through :mod:`trl_opd.scoring`, whose reverse
    KL of the student ``policy`` against the "teacher" ``reference`` is KL(policy ‖ reference).
    """
    was_training = policy.training
    policy.eval()
    # The scoring reads both heads directly and runs the backbones: full under ZeRO-3 and FSDP2 (trl_opd.sharding).
    try:
        with gathered_heads(policy, reference), unsharded(policy, reference):
            kl = completion_divergences(
                policy, reference, prompt_ids, samples, "rkl", pad_token_id=pad_token_id, batch_size=batch_size
            )
            policy_lp = completion_log_probs(policy, prompt_ids, samples, pad_token_id, batch_size)
            reference_lp = completion_log_probs(reference, prompt_ids, samples, pad_token_id, batch_size)
    finally:
        policy.train(was_training)
    return [(sum(k), sum(p) - sum(r), len(k)) for k, p, r in zip(kl, policy_lp, reference_lp, strict=True)]


def summarize_kl(rows: list[tuple[float, float, int]]) -> dict:
    """``kl``, ``kl_mc``, ``kl_per_token`` and ``kl_samples`` of the rows of :func:`kl_rows`."""
    if not rows:
        return {"kl": None, "kl_mc": None, "kl_per_token": None, "kl_samples": 0}
    tokens = sum(r[2] for r in rows)
    return {
        "kl": sum(r[0] for r in rows) / len(rows),
        "kl_mc": sum(r[1] for r in rows) / len(rows),
        "kl_per_token": sum(r[0] for r in rows) / max(tokens, 1),
        "kl_samples": len(rows),
    }
