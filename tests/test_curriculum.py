"""Tests of :mod:`trl_opd.hooks.curriculum`: the PACED weights ``w = floor + p^α (1 − p)^β``, the EMA state, the
RepeatSampler-layout sampler (lazy draws, determinism, resume), the easy-first warm-up, metrics and validation.

All random draws use fixed seeds, so the statistical tests cannot flake.
"""

import itertools
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trl.trainer.utils import RepeatSampler

from trl_opd.hooks.curriculum import PacedCurriculum, PacedSampler, observation_from_divergence, paced_weights


TOL = 1e-12


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def batches_of(items, batch_size, repeat_count=1, mini_repeat_count=1):
    """Generation batches (distinct indices, in order) from a RepeatSampler-layout stream (layout checked)."""
    block = batch_size * mini_repeat_count
    period = block * repeat_count
    assert len(items) % period == 0
    out = []
    for start in range(0, len(items), period):
        chunk = items[start : start + period]
        first = chunk[:block]
        batch = first[::mini_repeat_count]
        assert first == [i for i in batch for _ in range(mini_repeat_count)]
        assert chunk == first * repeat_count
        out.append(batch)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# paced_weights and the divergence proxy.
# ----------------------------------------------------------------------------------------------------------------------


def test_paced_weights_hand_values():
    floor = 1e-3
    w = paced_weights(torch.tensor([0.5, 0.0, 1.0, 0.25], dtype=torch.float64), floor=floor)
    assert w.tolist() == pytest.approx([0.25 + floor, floor, floor, 0.1875 + floor], abs=TOL)
    half = torch.tensor(0.5, dtype=torch.float64)
    assert float(paced_weights(half, alpha=2.0, beta=1.0, floor=floor)) == pytest.approx(0.125 + floor, abs=TOL)
    assert float(paced_weights(half, alpha=1.0, beta=2.0, floor=0.0)) == pytest.approx(0.125, abs=TOL)
    # α = 0: 0^0 = 1, so w = floor + (1 − p)^β
    assert float(paced_weights(torch.tensor(0.0), alpha=0.0, beta=1.0, floor=0.0)) == pytest.approx(1.0)
    # lists are accepted, float32 is kept
    assert paced_weights([0.5], floor=0.0).tolist() == pytest.approx([0.25])
    assert paced_weights(torch.tensor([0.5], dtype=torch.float32)).dtype == torch.float32


def test_paced_weights_monotone_toward_half():
    p = torch.linspace(0, 1, 1001, dtype=torch.float64)
    w = paced_weights(p)
    left, right = w[:501], w[500:]
    assert bool((left[1:] > left[:-1]).all())
    assert bool((right[1:] < right[:-1]).all())
    assert int(w.argmax()) == 500


@settings(max_examples=60, deadline=None)
@given(
    alpha=st.floats(0.1, 4.0),
    beta=st.floats(0.1, 4.0),
    p=st.floats(0.0, 1.0),
    q=st.floats(0.0, 1.0),
)
def test_paced_weights_peak_and_unimodal(alpha, beta, p, q):
    """Weights peak at p* = α / (α + β) and decrease away from it on both sides."""
    peak = alpha / (alpha + beta)
    w = lambda x: float(paced_weights(torch.tensor(x, dtype=torch.float64), alpha, beta, floor=1e-3))  # noqa: E731
    assert w(peak) >= max(w(p), w(q)) - 1e-15
    if p <= q <= peak or peak <= q <= p:  # q between p and the peak
        assert w(q) >= w(p) - 1e-15
    assert w(p) >= 1e-3


def test_observation_from_divergence():
    f = PacedCurriculum.observation_from_divergence
    assert f(0.0) == 1.0
    assert f(math.log(2)) == pytest.approx(0.5)
    assert isinstance(f(0.3), float)
    assert float(f(torch.tensor(1.5))) == pytest.approx(math.exp(-1.5))
    batch = f(torch.tensor([[0.0, 2.0, -0.01]], dtype=torch.float64))  # elementwise on tensors, shape kept
    assert batch.shape == (1, 3) and batch[0].tolist() == pytest.approx([1.0, math.exp(-2.0), 1.0], abs=TOL)
    assert f(-0.01) == 1.0  # estimator noise below 0 is clamped
    values = [f(d) for d in (0.0, 0.1, 0.5, 1.0, 3.0, 10.0)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert observation_from_divergence is PacedCurriculum.observation_from_divergence
    assert PacedCurriculum().observation_from_divergence(1.0) == pytest.approx(math.exp(-1.0))
    with pytest.raises(ValueError, match="NaN"):
        f(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        f(torch.tensor([0.1, float("nan")]))


# ----------------------------------------------------------------------------------------------------------------------
# State updates.
# ----------------------------------------------------------------------------------------------------------------------


def test_bind_and_ema_update_in_order():
    c = PacedCurriculum(prior=0.4, ema=0.5).bind(5)
    assert c.p.tolist() == [0.4] * 5 and c.visits.tolist() == [0] * 5
    c.update([2, 2, 4], [1.0, 0.0, 1.0])
    # index 2: 0.4 -> 0.7 -> 0.35 (in order); index 4: 0.4 -> 0.7
    assert c.p.tolist() == pytest.approx([0.4, 0.4, 0.35, 0.4, 0.7], abs=TOL)
    assert c.visits.tolist() == [0, 0, 2, 0, 1]
    c.update(torch.tensor([0]), torch.tensor([0.2], dtype=torch.float64))
    assert float(c.p[0]) == pytest.approx(0.3, abs=TOL)
    c.update([], [])  # no-op
    full = PacedCurriculum(ema=1.0).bind(2).update([1], [0.9])
    assert full.p.tolist() == pytest.approx([0.5, 0.9], abs=TOL)


def test_success_threshold_binarises():
    c = PacedCurriculum(ema=1.0, success_threshold=0.6).bind(3)
    c.update([0, 1, 2], [0.59, 0.6, 0.99])
    assert c.p.tolist() == [0.0, 1.0, 1.0]


# ----------------------------------------------------------------------------------------------------------------------
# Layout.
# ----------------------------------------------------------------------------------------------------------------------


def test_layout_matches_repeat_sampler():
    c = PacedCurriculum().bind(7)
    sampler = c.sampler(batch_size=3, repeat_count=4, mini_repeat_count=2, seed=0)
    assert isinstance(sampler, PacedSampler) and isinstance(sampler, torch.utils.data.Sampler)
    items = list(sampler)
    reference = RepeatSampler(list(range(7)), mini_repeat_count=2, batch_size=3, repeat_count=4, seed=0)
    assert len(sampler) == len(items) == len(reference) == len(list(reference)) == 2 * 24
    for block_start in range(0, len(items), 24):
        period = items[block_start : block_start + 24]
        six = period[:6]
        assert six[0::2] == six[1::2]  # each index twice in place
        assert len(set(six[0::2])) == 3  # distinct within a generation batch
        assert period == six * 4  # the whole block repeated 4 times
    assert batches_of(items, 3, 4, 2) == [b["indices"] for b in (c.batch_record(0), c.batch_record(1))]
    assert c.generation_batches_drawn == 2


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 12),
    batch_size=st.integers(1, 12),
    repeat_count=st.integers(1, 4),
    mini=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_layout_property(n, batch_size, repeat_count, mini, seed):
    if batch_size > n:
        with pytest.raises(ValueError, match="batch_size"):
            PacedCurriculum().bind(n).sampler(batch_size)
        return
    sampler = PacedCurriculum().bind(n).sampler(batch_size, repeat_count, mini, seed=seed)
    items = list(sampler)
    assert len(items) == len(sampler) == (n // batch_size) * batch_size * mini * repeat_count
    for batch in batches_of(items, batch_size, repeat_count, mini):
        assert len(set(batch)) == batch_size and all(0 <= i < n for i in batch)


# ----------------------------------------------------------------------------------------------------------------------
# Frontier preference and lazy draws.
# ----------------------------------------------------------------------------------------------------------------------


def test_frontier_preference_matches_weights():
    c = PacedCurriculum().bind(10)
    solved, frontier = list(range(5)), list(range(5, 10))
    for _ in range(12):
        c.update(solved, [0.95] * 5)
        c.update(frontier, [0.5] * 5)
    assert c.p[:5].tolist() == pytest.approx([0.95] * 5, abs=1e-3)
    q = c.sampling_probabilities()
    assert float(q.sum()) == pytest.approx(1.0, abs=TOL)
    iterator = iter(c.sampler(batch_size=1, seed=123))
    counts = torch.zeros(10)
    draws = 2000
    for _ in range(draws):
        try:
            counts[next(iterator)] += 1
        except StopIteration:  # one epoch is 10 single batches
            iterator = iter(c.sampler(batch_size=1))
            counts[next(iterator)] += 1
    frontier_count, solved_count = float(counts[frontier].sum()), float(counts[solved].sum())
    assert frontier_count >= 3 * solved_count
    expected = draws * q
    assert frontier_count / draws == pytest.approx(float(q[frontier].sum()), abs=0.03)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30.0  # 9 degrees of freedom: P(χ² > 30) ≈ 4e-4; fixed seed, so deterministic
    assert c.generation_batches_drawn == draws


def test_update_changes_later_draws():
    n = 12
    c = PacedCurriculum(ema=1.0).bind(n)
    iterator = iter(c.sampler(batch_size=2, repeat_count=2, seed=7))
    take(iterator, 4)  # the first generation batch, drawn from the prior
    assert c.generation_batches_drawn == 1
    c.update(list(range(n)), [0.5 if i == 5 else 1.0 for i in range(n)])
    later = batches_of(list(iterator), 2, 2)  # 5 more batches, each drawn after the update
    assert len(later) == n // 2 - 1
    assert sum(5 in batch for batch in later) >= len(later) - 1
    if 5 in later[-1]:  # the last batch's metrics: p = 0.5 for example 5, 1.0 for the other one
        assert c.last_batch_metrics()["curriculum/mean_p"] == pytest.approx(0.75, abs=TOL)


# ----------------------------------------------------------------------------------------------------------------------
# Determinism and resume.
# ----------------------------------------------------------------------------------------------------------------------


def _run(c, sampler, batches, batch_size=3, repeat_count=2):
    """Draw ``batches`` generation batches, updating the curriculum after each (a deterministic fake signal)."""
    iterator = iter(sampler)
    out = []
    for _ in range(batches):
        batch = batches_of(take(iterator, batch_size * repeat_count), batch_size, repeat_count)[0]
        c.update(batch, [((i * 7) % 5) / 4 for i in batch])
        out.append(batch)
    return out


def test_determinism_same_seed_same_history():
    a = PacedCurriculum().bind(20)
    b = PacedCurriculum().bind(20)
    runs = [_run(cur, cur.sampler(3, 2, seed=5), 6) for cur in (a, b)]
    assert runs[0] == runs[1]
    other = PacedCurriculum().bind(20)
    assert _run(other, other.sampler(3, 2, seed=6), 6) != runs[0]
    assert a.p.tolist() == b.p.tolist()


def test_resume_equality(tmp_path):
    c = PacedCurriculum(warmup_steps=4).bind(20, difficulty=list(range(20)))
    sampler = c.sampler(3, 2, seed=11)
    _run(c, sampler, 3)
    path = tmp_path / "ckpt" / "paced_curriculum.json"
    c.save(path)
    json.loads(path.read_text())  # valid JSON
    list_a = _run(c, sampler, 2)  # (continuing a fresh iteration of the same sampler: same curriculum stream)

    resumed = PacedCurriculum().load(path)
    assert resumed.warmup_steps == 4 and resumed.generation_batches_drawn == 3
    list_b = _run(resumed, resumed.sampler(3, 2, seed=999), 2)  # the seed is ignored: the stored stream continues
    assert list_a == list_b
    assert resumed.p.tolist() == c.p.tolist()


def test_sampler_recreated_per_epoch_continues_stream():
    a = PacedCurriculum().bind(9)
    first = list(a.sampler(3, seed=1))
    second = list(a.sampler(3, seed=1))  # a new epoch / a re-created sampler: not a replay of the first epoch
    b = PacedCurriculum().bind(9)
    sampler = b.sampler(3, seed=1)
    assert list(sampler) + list(sampler) == first + second
    assert a.generation_batches_drawn == 6


def test_state_dict_is_json_and_roundtrips():
    c = PacedCurriculum(alpha=2.0, beta=0.5, prior=0.3, ema=0.25, floor=0.01, success_threshold=None).bind(6)
    take(iter(c.sampler(2, seed=3)), 2)
    c.update([1, 4], [0.2, 0.9])
    state = c.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert isinstance(state["generator_state"], list) and all(isinstance(v, int) for v in state["generator_state"])
    d = PacedCurriculum().load_state_dict(json.loads(json.dumps(state)))
    assert d.state_dict() == state
    assert (d.alpha, d.beta, d.prior, d.ema, d.floor) == (2.0, 0.5, 0.3, 0.25, 0.01)
    assert torch.equal(d.sampling_probabilities(), c.sampling_probabilities())
    assert d.last_batch_metrics() == c.last_batch_metrics()


def _prefetching_run(c, iterator, steps, batch_size=3, repeat_count=2, save_at=None, path=None, lookahead=None):
    """Mimic Trainer + accelerate: batch k+1 is drawn (prefetched) before the update from batch k."""
    per_batch = batch_size * repeat_count
    trained = []
    current = lookahead if lookahead is not None else take(iterator, per_batch)
    for step in range(steps):
        nxt = take(iterator, per_batch)  # prefetch: draws the next generation batch now
        batch = batches_of(current, batch_size, repeat_count)[0]
        c.update(batch, [((i * 3) % 4) / 3 for i in batch])
        trained.append(batch)
        if save_at is not None and step + 1 == save_at:
            c.save(path, consumed_batches=step + 1)
        current = nxt
    return trained


def test_resume_with_prefetch_replays_pending_batch(tmp_path):
    path = tmp_path / "paced_curriculum.json"
    c = PacedCurriculum().bind(30)
    uninterrupted = _prefetching_run(c, iter(c.sampler(3, 2, seed=4)), 7, save_at=3, path=path)
    state = json.loads(path.read_text())
    assert state["generation_batches_drawn"] == 4 and state["generation_batches_served"] == 3
    assert state["pending_batches"][0]["indices"] == uninterrupted[3]

    resumed = PacedCurriculum().load(path)
    after = _prefetching_run(resumed, iter(resumed.sampler(3, 2, seed=0)), 4)
    assert after == uninterrupted[3:]
    assert resumed.p.tolist() == c.p.tolist()
    assert resumed.batch_record(3)["indices"] == uninterrupted[3]
    with pytest.raises(ValueError, match="consumed_batches"):
        resumed.state_dict(consumed_batches=100)


# ----------------------------------------------------------------------------------------------------------------------
# Warm-up.
# ----------------------------------------------------------------------------------------------------------------------


def test_warmup_prefers_easy_then_fades():
    n, w, s = 5, 4, 3.0
    c = PacedCurriculum(warmup_steps=w, warmup_strength=s).bind(n, difficulty=[10.0, 40.0, 20.0, 30.0, 50.0])
    ranks = torch.tensor([0.0, 0.75, 0.25, 0.5, 1.0], dtype=torch.float64)
    sampler = c.sampler(1, seed=0)
    iterator = iter(sampler)
    for t in range(w):
        q = c.sampling_probabilities()
        factor = torch.exp(-s * (1 - t / w) * ranks)
        assert torch.allclose(c.warmup_factor(), factor, rtol=0, atol=TOL)
        assert torch.allclose(q, factor / factor.sum(), rtol=0, atol=TOL)  # equal p: only the factor differs
        order = [0, 2, 3, 1, 4]  # easiest to hardest
        assert all(float(q[a]) > float(q[b]) for a, b in zip(order, order[1:]))
        next(iterator)
    assert c.generation_batches_drawn == w
    assert torch.allclose(c.sampling_probabilities(), torch.full((n,), 1 / n, dtype=torch.float64), atol=TOL)


def test_warmup_ties_and_no_difficulty():
    c = PacedCurriculum(warmup_steps=3).bind(3, difficulty=[1.0, 1.0, 5.0])
    q = c.sampling_probabilities()
    assert float(q[0]) == pytest.approx(float(q[1]), abs=TOL) and float(q[0]) > float(q[2])
    with pytest.warns(UserWarning, match="warm-up is disabled"):
        d = PacedCurriculum(warmup_steps=3).bind(4)
    assert torch.allclose(d.sampling_probabilities(), torch.full((4,), 0.25, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------------------------
# Metrics.
# ----------------------------------------------------------------------------------------------------------------------


def test_metrics_keys_and_uniform_entropy():
    n = 8
    c = PacedCurriculum().bind(n)
    assert c.last_batch_metrics() == {}
    take(iter(c.sampler(4, seed=0)), 4)
    m = c.last_batch_metrics()
    assert {"curriculum/mean_p", "curriculum/weight_entropy", "curriculum/visited_fraction"} <= set(m)
    assert m["curriculum/weight_entropy"] == pytest.approx(math.log(n), abs=1e-12)
    assert m["curriculum/mean_p"] == pytest.approx(0.5) and m["curriculum/visited_fraction"] == 0.0
    c.update([0, 1, 2, 3], [1.0, 1.0, 1.0, 1.0])
    take(iter(c.sampler(4)), 4)
    m = c.last_batch_metrics()
    assert m["curriculum/visited_fraction"] == 0.5
    assert m["curriculum/weight_entropy"] < math.log(n)
    q = c.sampling_probabilities()
    assert m["curriculum/weight_entropy"] == pytest.approx(float(-(q * q.log()).sum()), abs=1e-12)
    assert "num_examples=8" in repr(c) and "unbound" in repr(PacedCurriculum())


# ----------------------------------------------------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": -1.0}, r"alpha must be a finite number >= 0"),
        ({"beta": float("nan")}, r"beta must be a finite number >= 0"),
        ({"ema": 0.0}, r"ema must be in \(0, 1\]"),
        ({"ema": 1.5}, r"ema must be in \(0, 1\]"),
        ({"prior": -0.1}, r"prior must be in \[0, 1\]"),
        ({"prior": 1.1}, r"prior must be in \[0, 1\]"),
        ({"floor": -1e-3}, r"floor must be a finite number >= 0"),
        ({"warmup_steps": -1}, r"warmup_steps must be an integer >= 0"),
        ({"warmup_steps": 2.5}, r"warmup_steps must be an integer >= 0"),
        ({"success_threshold": 2.0}, r"success_threshold must be None or in \[0, 1\]"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PacedCurriculum(**kwargs)


def test_usage_validation():
    c = PacedCurriculum()
    with pytest.raises(RuntimeError, match=r"before bind"):
        c.update([0], [1.0])
    with pytest.raises(RuntimeError, match=r"before bind"):
        c.sampler(1)
    c.bind(4)
    with pytest.raises(ValueError, match=r"finite and in \[0, 1\]; got nan"):
        c.update([0], [float("nan")])
    with pytest.raises(ValueError, match=r"finite and in \[0, 1\]; got 1.5 at position 1"):
        c.update([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match=r"2 indices but 1 observations"):
        c.update([0, 1], [0.5])
    with pytest.raises(IndexError, match=r"index 4 out of range"):
        c.update([4], [0.5])
    with pytest.raises(ValueError, match=r"difficulty has 3 values"):
        PacedCurriculum().bind(4, difficulty=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"num_examples must be an integer >= 1"):
        PacedCurriculum().bind(0)
    with pytest.raises(ValueError, match=r"repeat_count must be an integer >= 1"):
        c.sampler(2, repeat_count=0)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        paced_weights(torch.tensor([1.5]))
    assert c.p.tolist() == [0.5] * 4  # failed updates changed nothing
    zero = PacedCurriculum(floor=0.0, ema=1.0).bind(3)
    zero.update([0, 1, 2], [1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=r"floor"):
        zero.sampling_probabilities()
