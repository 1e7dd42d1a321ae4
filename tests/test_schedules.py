"""Tests of :mod:`trl_opd.schedules` and of the schedules :class:`trl_opd.GKDConfig` builds (its validation of the
other fields is in test_gkd_config.py).

Schedule values are compared with ``pytest.approx(abs=1e-12)`` (plain float arithmetic) unless stated otherwise.
"""

import pytest

from trl_opd.schedules import LMBDA_SCHEDULES, LambdaSchedule


TOL = 1e-12
ALLOWED_SCHEDULES = ("'constant'", "'linear'", "'three_phase'")


# ----------------------------------------------------------------------------------------------------------------------
# Values.
# ----------------------------------------------------------------------------------------------------------------------


def test_constant_everywhere():
    schedule = LambdaSchedule(kind="constant", lmbda=0.3)
    for progress in (-1.0, 0.0, 0.1, 0.2, 0.5, 0.6, 0.99, 1.0, 2.0):
        assert schedule(progress) == pytest.approx(0.3, abs=TOL), progress
    assert schedule.at_step(7, 10) == pytest.approx(0.3, abs=TOL)


def test_linear_interpolates_and_clips():
    schedule = LambdaSchedule(kind="linear", start=0.2, end=0.8)
    assert schedule(0.0) == pytest.approx(0.2, abs=TOL)
    assert schedule(0.25) == pytest.approx(0.35, abs=TOL)
    assert schedule(0.5) == pytest.approx(0.5, abs=TOL)
    assert schedule(1.0) == pytest.approx(0.8, abs=TOL)
    # Clipped outside [0, 1].
    assert schedule(-0.5) == pytest.approx(0.2, abs=TOL)
    assert schedule(1.5) == pytest.approx(0.8, abs=TOL)
    assert schedule(100.0) == pytest.approx(0.8, abs=TOL)


def test_linear_can_decrease():
    schedule = LambdaSchedule(kind="linear", start=1.0, end=0.0)
    assert [schedule(p) for p in (0.0, 0.5, 1.0, 2.0)] == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=TOL)


def test_linear_defaults_from_config(make_gkd_config):
    schedule = make_gkd_config(lmbda_schedule="linear").lambda_schedule()
    assert schedule.kind == "linear"
    assert (schedule.start, schedule.end) == (0.0, 1.0)
    assert [schedule(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.0, 0.5, 1.0], abs=TOL)


def test_three_phase_defaults_from_config(make_gkd_config):
    schedule = make_gkd_config(lmbda_schedule="three_phase").lambda_schedule()
    assert schedule.kind == "three_phase"
    assert (schedule.start, schedule.end) == (0.3, 0.7)
    assert (schedule.warmup_fraction, schedule.mixed_fraction) == (0.2, 0.4)
    # Phase 1: off-policy.
    for progress in (-0.1, 0.0, 0.1, 0.19, 0.2 - 1e-9):
        assert schedule(progress) == 0.0, progress
    # Phase 2: the ramp 0.3 -> 0.7 over [0.2, 0.6).
    assert schedule(0.2) == pytest.approx(0.3, abs=TOL)
    assert schedule(0.3) == pytest.approx(0.4, abs=TOL)
    assert schedule(0.4) == pytest.approx(0.5, abs=TOL)
    assert schedule(0.6 - 1e-9) == pytest.approx(0.7, abs=1e-8)
    assert schedule(0.6 - 1e-9) < 0.7
    # Phase 3: on-policy from 0.6 on.
    for progress in (0.6 + 1e-9, 0.75, 0.9, 1.0, 1.5):
        assert schedule(progress) == 1.0, progress


def test_three_phase_is_on_policy_at_exactly_the_phase_boundary(make_gkd_config):
    """λ = 1 for s >= w + m, including s = w + m = 0.6 exactly (the documented phase boundary)."""
    schedule = make_gkd_config(lmbda_schedule="three_phase").lambda_schedule()
    assert schedule(0.6) == 1.0
    assert schedule.at_step(60, 100) == 1.0
    assert schedule.at_step(3, 5) == 1.0
    custom = LambdaSchedule(kind="three_phase", warmup_fraction=0.1, mixed_fraction=0.2)
    assert custom(0.3) == 1.0


def test_three_phase_monotone_non_decreasing():
    schedule = LambdaSchedule(kind="three_phase")
    values = [schedule(i / 1000) for i in range(-10, 1011)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert min(values) == 0.0 and max(values) == 1.0


def test_at_step():
    schedule = LambdaSchedule(kind="three_phase")
    assert schedule.at_step(0, 100) == 0.0
    assert schedule.at_step(19, 100) == 0.0
    assert schedule.at_step(20, 100) == pytest.approx(0.3, abs=TOL)
    assert schedule.at_step(40, 100) == pytest.approx(0.5, abs=TOL)
    assert schedule.at_step(59, 100) == pytest.approx(0.3 + 0.4 * 39 / 40, abs=TOL)
    assert schedule.at_step(100, 100) == 1.0
    assert schedule.at_step(150, 100) == 1.0  # past the end: clipped
    # max_steps <= 0 reads as progress 0.
    assert schedule.at_step(5, 0) == 0.0
    assert schedule.at_step(5, -1) == 0.0
    linear = LambdaSchedule(kind="linear", start=0.0, end=1.0)
    assert linear.at_step(1, 4) == pytest.approx(0.25, abs=TOL)
    assert linear.at_step(3, 0) == 0.0


def test_three_phase_custom_fractions_and_ramp():
    schedule = LambdaSchedule(kind="three_phase", start=0.1, end=0.9, warmup_fraction=0.5, mixed_fraction=0.25)
    assert schedule(0.49) == 0.0
    assert schedule(0.5) == pytest.approx(0.1, abs=TOL)
    assert schedule(0.625) == pytest.approx(0.5, abs=TOL)
    assert schedule(0.74) == pytest.approx(0.1 + 0.8 * 0.24 / 0.25, abs=TOL)
    assert schedule(0.75) == 1.0  # 0.5 + 0.25 is exact in binary
    assert schedule(0.9) == 1.0
    # No warm-up: the ramp starts at progress 0.
    no_warmup = LambdaSchedule(kind="three_phase", warmup_fraction=0.0, mixed_fraction=0.5)
    assert no_warmup(0.0) == pytest.approx(0.3, abs=TOL)
    assert no_warmup(0.25) == pytest.approx(0.5, abs=TOL)
    assert no_warmup(0.5) == 1.0
    # No mixed phase: a step from 0 to 1 (and no division by zero).
    step = LambdaSchedule(kind="three_phase", warmup_fraction=0.5, mixed_fraction=0.0)
    assert step(0.49) == 0.0 and step(0.5) == 1.0 and step(1.0) == 1.0
    # All warm-up: off-policy until the very end.
    warm = LambdaSchedule(kind="three_phase", warmup_fraction=1.0, mixed_fraction=0.0)
    assert warm(0.99) == 0.0 and warm(1.0) == 1.0


def test_custom_fractions_through_config(make_gkd_config):
    config = make_gkd_config(
        lmbda_schedule="three_phase", lmbda_start=0.2, lmbda_end=0.6, lmbda_warmup_fraction=0.25,
        lmbda_mixed_fraction=0.5,
    )  # fmt: skip
    schedule = config.lambda_schedule()
    assert (schedule.start, schedule.end, schedule.warmup_fraction, schedule.mixed_fraction) == (0.2, 0.6, 0.25, 0.5)
    assert schedule(0.2) == 0.0
    assert schedule(0.25) == pytest.approx(0.2, abs=TOL)
    assert schedule(0.5) == pytest.approx(0.4, abs=TOL)
    assert schedule(0.8) == 1.0
    # Explicit start / end override the linear defaults too.
    linear = make_gkd_config(lmbda_schedule="linear", lmbda_start=0.5, lmbda_end=0.5).lambda_schedule()
    assert [linear(p) for p in (0.0, 1.0)] == pytest.approx([0.5, 0.5], abs=TOL)


def test_constant_from_config(make_gkd_config):
    schedule = make_gkd_config(lmbda=0.25).lambda_schedule()
    assert schedule.kind == "constant"
    assert schedule(0.0) == schedule(1.0) == 0.25


# ----------------------------------------------------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------------------------------------------------


def test_unknown_kind_lists_allowed_names():
    assert LMBDA_SCHEDULES == ("constant", "linear", "three_phase")
    with pytest.raises(ValueError) as info:
        LambdaSchedule(kind="cosine")
    for name in ALLOWED_SCHEDULES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"lmbda": 1.5}, "lmbda"),
        ({"lmbda": -0.1}, "lmbda"),
        ({"start": 1.2}, "start"),
        ({"end": -0.5}, "end"),
        ({"warmup_fraction": 1.1}, "warmup_fraction"),
        ({"mixed_fraction": -0.1}, "mixed_fraction"),
    ],
)
def test_out_of_range_values_raise(kwargs, field):
    with pytest.raises(ValueError, match=rf"{field} must be in \[0, 1\]"):
        LambdaSchedule(**kwargs)


def test_fractions_summing_past_one_raise():
    with pytest.raises(ValueError, match=r"warmup_fraction \+ mixed_fraction must be <= 1"):
        LambdaSchedule(kind="three_phase", warmup_fraction=0.7, mixed_fraction=0.4)
    LambdaSchedule(kind="three_phase", warmup_fraction=0.5, mixed_fraction=0.5)  # exactly 1 is fine


def test_schedule_is_frozen():
    schedule = LambdaSchedule()
    with pytest.raises(AttributeError):
        schedule.lmbda = 0.9  # frozen dataclass: cannot bypass the validation after construction


# ----------------------------------------------------------------------------------------------------------------------
# The facts a schedule owns: its defaults, λ ≡ 0 / λ ≡ 1, its description.
# ----------------------------------------------------------------------------------------------------------------------


def test_ramp_defaults_depend_on_the_kind():
    assert (LambdaSchedule(kind="linear").start, LambdaSchedule(kind="linear").end) == (0.0, 1.0)
    assert (LambdaSchedule(kind="three_phase").start, LambdaSchedule(kind="three_phase").end) == (0.3, 0.7)
    assert LambdaSchedule(kind="linear", end=0.4).end == 0.4


@pytest.mark.parametrize(
    ("kwargs", "on", "off"),
    [
        ({"kind": "constant", "lmbda": 1.0}, True, False),
        ({"kind": "constant", "lmbda": 0.0}, False, True),
        ({"kind": "constant", "lmbda": 0.5}, False, False),
        ({"kind": "linear", "start": 0.0, "end": 0.0}, False, True),  # refused a cache before: only constant counted
        ({"kind": "linear", "start": 1.0, "end": 1.0}, True, False),
        ({"kind": "linear", "start": 0.0, "end": 1.0}, False, False),
        ({"kind": "three_phase"}, False, False),
        ({"kind": "three_phase", "start": 1.0, "end": 1.0, "warmup_fraction": 0.0}, True, False),
        ({"kind": "three_phase", "start": 1.0, "end": 1.0}, False, False),  # the warm-up is off-policy
        ({"kind": "three_phase", "start": 0.0, "end": 0.0, "warmup_fraction": 0.5, "mixed_fraction": 0.5}, 0, 0),
    ],
)
def test_always_on_and_off_policy_hold_over_the_whole_run(kwargs, on, off):
    schedule = LambdaSchedule(**kwargs)
    assert (schedule.always_on_policy, schedule.always_off_policy) == (on, off)
    values = {schedule(s / 200) for s in range(201)}  # the facts agree with the schedule's values
    assert (values == {1.0}) == on and (values == {0.0}) == off


def test_description_is_one_line_per_kind():
    assert LambdaSchedule(kind="constant", lmbda=0.25).describe() == "constant λ = 0.25"
    assert LambdaSchedule(kind="linear").describe() == "linear λ 0 → 1"
    assert LambdaSchedule(kind="three_phase").describe() == "three_phase: λ = 0 for 20%, 0.3 → 0.7 over 40%, then λ = 1"


def test_config_builds_its_schedule_once(make_gkd_config):
    config = make_gkd_config(lmbda_schedule="linear", lmbda_start=0.0, lmbda_end=0.0)
    assert config.lambda_schedule() is config.lambda_schedule()
    assert config.lambda_schedule() == LambdaSchedule(kind="linear", start=0.0, end=0.0)
    assert config.lambda_schedule().always_off_policy
    config.lmbda_end = 1.0  # a field assigned after construction is not ignored
    assert config.lambda_schedule() == LambdaSchedule(kind="linear", start=0.0, end=1.0)
    config.lmbda_end = 1.5
    with pytest.raises(ValueError, match=r"end must be in \[0, 1\]"):
        config.lambda_schedule()
