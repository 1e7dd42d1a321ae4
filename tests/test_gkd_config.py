"""GKDConfig validates its fields with messages naming the allowed values and knows when a dataset needs completions."""

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
        ({"lmbda_schedule": "linear", "lmbda_start": 1.0, "lmbda_end": 1.0}, True),  # only constant counts as λ ≡ 1
        ({"lmbda_schedule": "three_phase"}, True),
        ({"lmbda_schedule": "three_phase", "seq_kd": True}, False),
    ],
)
def test_needs_dataset_completions(make_gkd_config, kwargs, needed):
    assert make_gkd_config(**kwargs).needs_dataset_completions is needed
