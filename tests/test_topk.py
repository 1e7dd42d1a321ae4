"""Top-k + tail divergences: a hand value, k = V equals the full path, values and gradients against a float64
coarse-graining by autograd, the data-processing inequality, precomputed targets, and the chunk's tile count."""

import math

import pytest
import torch
from test_divergences import assert_float32_close

from trl_opd.divergences import (
    DIVERGENCES,
    chunked_divergence_loss,
    chunked_per_token_divergence,
    divergence_from_log_probs,
)
from trl_opd.divergences.registry import TOPK_TILES
from trl_opd.divergences.topk import TopKTargets, topk_targets_from_hidden
from trl_opd.measurement import LiveTensorMeter


def head_inputs(n=37, h=12, v=41, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        student_hidden=torch.randn(n, h, generator=g).requires_grad_(),
        teacher_hidden=torch.randn(n, h, generator=g) * 1.5,
        student_weight=torch.randn(v, h, generator=g) / math.sqrt(h) * 2,
        teacher_weight=torch.randn(v, h, generator=g) / math.sqrt(h) * 2,
    )


def coarse_reference64(x, divergence, beta, temperature, k):
    """The float64 reference: both distributions binned on the teacher's top-k ids + tail, the divergence on the bins,
    differentiated by autograd (an independent path: no closed-form gradient)."""
    z_s = x["student_hidden"].double() @ x["student_weight"].double().t() / temperature
    z_t = x["teacher_hidden"].double() @ x["teacher_weight"].double().t() / temperature
    log_p_s, log_p_t = z_s.log_softmax(-1), z_t.log_softmax(-1)
    ids = log_p_t.topk(k, dim=-1).indices
    tail_mask = torch.ones_like(log_p_t, dtype=torch.bool).scatter_(-1, ids, False)

    def bins(log_p):
        tail = log_p.masked_fill(~tail_mask, -math.inf).logsumexp(-1, keepdim=True)
        return torch.cat([log_p.gather(-1, ids), tail], -1)

    return divergence_from_log_probs(bins(log_p_s), bins(log_p_t), divergence, beta), z_s


def test_hand_value_and_lower_bound():
    p_t, p_s = [0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]
    z_t, z_s = torch.tensor([p_t]).log(), torch.tensor([p_s]).log().requires_grad_()
    eye = torch.eye(4)
    top2 = chunked_per_token_divergence(z_s, z_t, eye, eye, "fkl", teacher_top_k=2)
    # bins {0, 1, tail}: q_T = (0.5, 0.3, 0.2), q_S = (0.25, 0.25, 0.5)
    by_hand = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    assert top2.item() == pytest.approx(by_hand, abs=1e-6) == pytest.approx(0.218012, abs=1e-6)
    full = chunked_per_token_divergence(z_s, z_t, eye, eye, "fkl").item()
    assert full == pytest.approx(0.244174, abs=1e-6) and top2.item() < full  # data processing


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_k_equal_to_the_vocabulary_is_the_full_path(divergence):
    x = head_inputs(seed=1)
    v = x["student_weight"].shape[0]
    full = chunked_per_token_divergence(**x, divergence=divergence, beta=0.3, temperature=0.8, chunk_size=16)
    topk = chunked_per_token_divergence(**x, divergence=divergence, beta=0.3, temperature=0.8, chunk_size=16,
                                        teacher_top_k=v)  # fmt: skip
    torch.testing.assert_close(topk, full, atol=1e-6, rtol=1e-6)
    (g_full,) = torch.autograd.grad(full.sum(), x["student_hidden"])
    (g_topk,) = torch.autograd.grad(topk.sum(), x["student_hidden"])
    torch.testing.assert_close(g_topk, g_full, atol=1e-6, rtol=1e-6)
    loss_full, _, _ = chunked_divergence_loss(**x, divergence=divergence, beta=0.3, temperature=0.8, normalizer=7.0)
    loss_topk, _, _ = chunked_divergence_loss(**x, divergence=divergence, beta=0.3, temperature=0.8, normalizer=7.0,
                                              teacher_top_k=v + 5)  # fmt: skip
    torch.testing.assert_close(loss_topk, loss_full, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_values_and_gradients_against_a_float64_coarse_graining(divergence, k):
    x = head_inputs(seed=2)
    values = chunked_per_token_divergence(**x, divergence=divergence, beta=0.3, temperature=0.7, chunk_size=8,
                                          teacher_top_k=k)  # fmt: skip
    reference, z_s = coarse_reference64(x, divergence, 0.3, 0.7, k)
    assert_float32_close(values, reference.detach())
    (grad,) = torch.autograd.grad(values.sum(), x["student_hidden"])
    (grad_z,) = torch.autograd.grad(reference.sum(), z_s)
    grad64 = (grad_z / 0.7) @ x["student_weight"].double()  # chain rule through z = h Wᵀ / τ
    assert_float32_close(grad, grad64, name="grad")


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_coarse_grained_divergence_is_a_lower_bound(divergence):
    x = head_inputs(seed=3)
    full = chunked_per_token_divergence(**x, divergence=divergence, beta=0.5).detach()
    for k in (1, 4, 16):
        topk = chunked_per_token_divergence(**x, divergence=divergence, beta=0.5, teacher_top_k=k).detach()
        assert (topk <= full + 1e-5).all(), (divergence, k)


def test_precomputed_targets_equal_the_live_teacher():
    x = head_inputs(seed=4)
    from trl_opd.divergences import LMHead

    targets = topk_targets_from_hidden(x["teacher_hidden"], LMHead(x["teacher_weight"]), 6, 41, chunk=5)
    assert targets.ids.shape == (37, 6) and torch.all(targets.log_probs[:, :-1] >= targets.log_probs[:, 1:])
    mass = targets.log_probs.exp().sum(-1) + targets.tail_log_prob.exp()
    torch.testing.assert_close(mass, torch.ones(37), atol=1e-5, rtol=0)
    live = chunked_per_token_divergence(**x, divergence="jsd", teacher_top_k=6)
    cached = chunked_per_token_divergence(x["student_hidden"], targets, x["student_weight"], None, "jsd")
    torch.testing.assert_close(cached, live, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="either teacher hidden states with their head, or TopKTargets"):
        chunked_per_token_divergence(x["student_hidden"], targets, x["student_weight"], x["teacher_weight"], "jsd")


def test_targets_validate_their_shapes():
    with pytest.raises(ValueError, match=r"one shape \(N, k\)"):
        TopKTargets(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 4), torch.zeros(3))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_a_topk_chunk_keeps_two_vocabulary_tiles(divergence):
    n, v, h = 96, 16384, 32
    torch.manual_seed(0)
    h_s = torch.randn(n, h, requires_grad=True)
    h_t, w_s, w_t = torch.randn(n, h), torch.randn(v, h), torch.randn(v, h)
    meter = LiveTensorMeter().ignore([h_s, h_t, w_s, w_t])
    with meter:
        chunked_divergence_loss(h_s, h_t, w_s, w_t, divergence, chunk_size=n, teacher_top_k=64)[0].backward()
    tile = n * v * 4
    rest = (
        2 * n * h * 4 + n * 64 * (8 + 4 * 6) + 16 * n * 4
    )  # the hidden-state gradient (and cast), bins, per-row values
    assert abs((meter.peak - rest) / tile - TOPK_TILES) < 0.05, meter.peak / tile
