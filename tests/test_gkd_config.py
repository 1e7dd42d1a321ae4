"""GKDConfig validates its fields with messages naming the allowed values and knows when a dataset needs completions."""

import logging

import pytest


@pytest.mark.parametrize(
    "kwargs, allowed",
    [
        ({"lmbda": 1.5}, [r"\[0(\.0)?, 1(\.0)?\]"]),
        ({"divergence": "kl"}, ["'fkl'", "'rkl'", "'jsd'", "'tvd'"]),
        ({"beta": 2.0}, [r"\[0(\.0)?, 1(\.0)?\]"]),
        ({"lmbda_schedule": "cosine"}, ["'constant'", "'linear'", "'three_phase'"]),
        ({"lmbda_schedule": "three_phase", "lmbda_start": 1.5}, [r"\[0(\.0)?, 1(\.0)?\]"]),
        ({"lmbda_warmup_fraction": 0.8, "lmbda_mixed_fraction": 0.4}, [r"<= 1"]),
        ({"eval_lmbda": -0.5}, [r"\[0(\.0)?, 1(\.0)?\]"]),
    ],
)
def test_config_rejects_invalid_values(make_gkd_config, kwargs, allowed):
    import re

    with pytest.raises(ValueError) as info:
        make_gkd_config(**kwargs)
    message = str(info.value)
    for pattern in allowed:
        assert re.search(pattern, message), (pattern, message)


# ----------------------------------------------------------------------------------------------------------------------
# needs_dataset_completions.
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, needed",
    [
        ({"lmbda": 1.0}, False),  # always on-policy
        ({"lmbda": 0.3, "seq_kd": True}, False),  # off-policy rows come from the teacher
        ({"lmbda": 1.0, "seq_kd": True}, False),
        ({"lmbda": 0.5}, True),
        ({"lmbda": 0.0}, True),
        ({"lmbda": 0.999}, True),
        ({"lmbda_schedule": "linear"}, True),  # λ < 1 early in training
        ({"lmbda_schedule": "linear", "lmbda_start": 1.0, "lmbda_end": 1.0}, False),  # λ ≡ 1 as a schedule too
        ({"lmbda_schedule": "linear", "lmbda_start": 0.9, "lmbda_end": 1.0}, True),
        ({"lmbda_schedule": "three_phase"}, True),
        ({"lmbda_schedule": "three_phase", "seq_kd": True}, False),
    ],
)
def test_needs_dataset_completions(make_gkd_config, kwargs, needed):
    assert make_gkd_config(**kwargs).needs_dataset_completions is needed


@pytest.mark.parametrize(
    ("divergence", "beta", "warns"),
    [("rkl", 0.5, True), ("jsd", 0.9, True), ("jsd", 0.5, False), ("fkl", 0.5, False), ("tvd", 0.5, False)],
)
def test_top_k_with_a_reverse_kl_warns_with_the_measured_cost(make_gkd_config, caplog, divergence, beta, warns):
    with caplog.at_level(logging.WARNING, logger="trl_opd.trainers.teacher_args"):
        make_gkd_config(divergence=divergence, beta=beta, teacher_top_k=64)
        make_gkd_config(divergence=divergence, beta=beta)  # the full vocabulary never warns
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == warns
    if warns:
        assert "teacher_top_k=64" in messages[0] and "gradient cosine 0.52" in messages[0] and "fkl" in messages[0]
