"""Tests of :mod:`trl_opd.divergences`: worked numbers, equality with TRL, chunked vs dense, robustness, properties.

Tolerances are stated at each assert. Everything is computed in float32 by the library, so comparisons against
float64 references use ``atol`` around 1e-5 (values of order 1) unless stated otherwise.
"""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from trl_opd.divergences import (
    DIVERGENCES,
    LMHead,
    chunked_per_token_divergence,
    divergence_from_log_probs,
    entropy_from_logits,
    per_token_divergence,
)


def logits_of(probs):
    """Log-probabilities used as logits (softmax of them gives back ``probs``)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


def kl(p, q):
    """KL(p ‖ q) in nats with math.log, an independent reference."""
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def div(p_t, p_s, divergence, beta=0.5):
    """The library's divergence between teacher probabilities ``p_t`` and student probabilities ``p_s``."""
    return per_token_divergence(logits_of(p_s), logits_of(p_t), divergence, beta=beta).item()


# ----------------------------------------------------------------------------------------------------------------------
# 1. The tutorial's worked numbers.
# ----------------------------------------------------------------------------------------------------------------------


def test_kl_worked_example():
    p_t, p_s = [0.7, 0.2, 0.1], [0.3, 0.4, 0.3]
    # True value 0.344618; the tutorial prints 0.3447 because it sums terms rounded to 4 decimals.
    assert kl(p_t, p_s) == pytest.approx(0.344618, abs=1e-6)
    assert div(p_t, p_s, "fkl") == pytest.approx(0.344618, abs=1e-5)


def test_small_example_fkl_rkl_jsd():
    p_t, p_s = [0.5, 0.4, 0.1], [0.6, 0.3, 0.1]
    assert div(p_t, p_s, "fkl") == pytest.approx(0.0239, abs=5e-5)
    assert div(p_t, p_s, "rkl") == pytest.approx(0.0231, abs=5e-5)
    assert div(p_t, p_s, "jsd", beta=0.5) == pytest.approx(0.0059, abs=5e-5)
    # And to float32 precision against math.log references.
    m = [(a + b) / 2 for a, b in zip(p_t, p_s)]
    assert div(p_t, p_s, "fkl") == pytest.approx(kl(p_t, p_s), abs=1e-6)
    assert div(p_t, p_s, "rkl") == pytest.approx(kl(p_s, p_t), abs=1e-6)
    assert div(p_t, p_s, "jsd", beta=0.5) == pytest.approx(0.5 * kl(p_t, m) + 0.5 * kl(p_s, m), abs=1e-6)


def test_bimodal_example_true_values():
    # The tutorial's table (FKL A 0.191, B 0.552; RKL B 0.193, A 0.239) is wrong; these are the true values.
    p_t = [0.45, 0.05, 0.45, 0.05]
    a = [0.3, 0.2, 0.3, 0.2]  # covers both modes
    b = [0.7, 0.2, 0.05, 0.05]  # sits on one mode
    by_hand = {
        ("fkl", "A"): 0.45 * math.log(0.45 / 0.3) * 2 + 0.05 * math.log(0.05 / 0.2) * 2,
        ("fkl", "B"): 0.45 * math.log(0.45 / 0.7)
        + 0.05 * math.log(0.05 / 0.2)
        + 0.45 * math.log(0.45 / 0.05)
        + 0.05 * math.log(0.05 / 0.05),
        ("rkl", "A"): 0.3 * math.log(0.3 / 0.45) * 2 + 0.2 * math.log(0.2 / 0.05) * 2,
        ("rkl", "B"): 0.7 * math.log(0.7 / 0.45)
        + 0.2 * math.log(0.2 / 0.05)
        + 0.05 * math.log(0.05 / 0.45)
        + 0.05 * math.log(0.05 / 0.05),
    }
    expected = {("fkl", "A"): 0.2263, ("fkl", "B"): 0.7206, ("rkl", "A"): 0.3112, ("rkl", "B"): 0.4767}
    for key, value in expected.items():
        assert by_hand[key] == pytest.approx(value, abs=5e-5), key
        name, which = key
        assert div(p_t, a if which == "A" else b, name) == pytest.approx(by_hand[key], abs=1e-5), key

    # Forward KL prefers the mode-covering A.
    assert div(p_t, a, "fkl") < div(p_t, b, "fkl")
    # With these numbers reverse KL ALSO prefers A (0.311 < 0.477): it does NOT prefer the mode-seeking B,
    # contrary to the tutorial's claim.
    assert div(p_t, a, "rkl") < div(p_t, b, "rkl")


def test_seven_token_jsd_term_and_total():
    p_t = [0.01, 0.02, 0.85, 0.01, 0.05, 0.03, 0.03]
    p_s = [0.05, 0.10, 0.50, 0.10, 0.10, 0.05, 0.10]
    m = [(a + b) / 2 for a, b in zip(p_t, p_s)]
    terms = [0.5 * a * math.log(a / c) + 0.5 * b * math.log(b / c) for a, b, c in zip(p_t, p_s, m)]
    # Token 2's term: 0.02295 (the tutorial prints 0.0227 because it rounds 0.09797 down to 0.0977).
    assert terms[2] == pytest.approx(0.02295, abs=5e-6)

    # The same elementwise pieces in torch.
    pt, ps = torch.tensor(p_t, dtype=torch.float64), torch.tensor(p_s, dtype=torch.float64)
    mt = (pt + ps) / 2
    torch_terms = 0.5 * pt * (pt / mt).log() + 0.5 * ps * (ps / mt).log()
    assert torch_terms[2].item() == pytest.approx(0.02295, abs=5e-6)
    torch.testing.assert_close(torch_terms, torch.tensor(terms, dtype=torch.float64), atol=1e-12, rtol=0)

    # The library's full JSD(β=0.5) is the sum of all 7 terms.
    assert div(p_t, p_s, "jsd", beta=0.5) == pytest.approx(sum(terms), abs=1e-6)


def test_tvd_worked_example():
    p_t, p_s = [0.7, 0.2, 0.1], [0.3, 0.4, 0.3]
    assert 0.5 * sum(abs(a - b) for a, b in zip(p_t, p_s)) == pytest.approx(0.4, abs=1e-12)
    p_t, p_s = [0.5, 0.4, 0.1], [0.6, 0.3, 0.1]
    assert div(p_t, p_s, "tvd") == pytest.approx(0.1, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Equality with TRL's own losses.
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trl_gkd_loss():
    from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss


@pytest.fixture(scope="module")
def trl_chunked():
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    return ChunkedDivergenceFunction


def random_logits(*shape, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_matches_trl_generalized_jsd_loss(trl_gkd_loss, beta, temperature):
    student = random_logits(2, 5, 11, seed=1).requires_grad_()
    teacher = random_logits(2, 5, 11, seed=2)
    # reduction="none" returns the elementwise (B, T, V) terms; a float64 copy gives an accurate reference.
    student64 = student.detach().double().requires_grad_()
    terms = trl_gkd_loss(student64, teacher.double(), beta=beta, temperature=temperature, reduction="none")
    assert terms.shape == (2, 5, 11)
    reference = terms.sum(-1)
    ours = per_token_divergence(student, teacher, "jsd", beta=beta, temperature=temperature)
    assert ours.shape == (2, 5)
    torch.testing.assert_close(ours.double(), reference.detach(), atol=1e-5, rtol=1e-5)
    # Gradients with respect to the student logits agree too.
    (grad_ref,) = torch.autograd.grad(reference.sum(), student64)
    (grad_ours,) = torch.autograd.grad(ours.sum(), student)
    torch.testing.assert_close(grad_ours.double(), grad_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_fkl_rkl_are_jsd_endpoints(trl_gkd_loss, temperature):
    student, teacher = random_logits(2, 5, 11, seed=3), random_logits(2, 5, 11, seed=4)
    fkl = per_token_divergence(student, teacher, "fkl", temperature=temperature)
    rkl = per_token_divergence(student, teacher, "rkl", temperature=temperature)
    torch.testing.assert_close(fkl, per_token_divergence(student, teacher, "jsd", beta=0.0, temperature=temperature))
    torch.testing.assert_close(rkl, per_token_divergence(student, teacher, "jsd", beta=1.0, temperature=temperature))
    trl_fkl = trl_gkd_loss(student.double(), teacher.double(), beta=0.0, temperature=temperature, reduction="none")
    trl_rkl = trl_gkd_loss(student.double(), teacher.double(), beta=1.0, temperature=temperature, reduction="none")
    torch.testing.assert_close(fkl.double(), trl_fkl.sum(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rkl.double(), trl_rkl.sum(-1), atol=1e-5, rtol=1e-5)
    # FKL and RKL are different functions on these inputs (the test above would not notice swapped names otherwise).
    assert (fkl - rkl).abs().max() > 1e-2


def head_inputs(n=53, h_s=16, h_t=24, v=97, v_t=None, seed=0, bias=False):
    """Random student/teacher hidden states and heads; the student's require grad."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "student_hidden": torch.randn(n, h_s, generator=g).requires_grad_(),
        "teacher_hidden": torch.randn(n, h_t, generator=g),
        "student_weight": (torch.randn(v, h_s, generator=g) / math.sqrt(h_s) * 2).requires_grad_(),
        "teacher_weight": torch.randn(v_t or v, h_t, generator=g) / math.sqrt(h_t) * 2,
    }
    if bias:
        inputs["student_bias"] = (torch.randn(v, generator=g) * 0.5).requires_grad_()
    return inputs


def student_leaves(inputs):
    return [inputs[k] for k in ("student_hidden", "student_weight", "student_bias") if k in inputs]


def grads(values, leaves):
    return torch.autograd.grad(values.sum(), leaves)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_chunked_matches_trl_chunked_divergence(trl_chunked, beta, temperature):
    x = head_inputs(seed=5)
    theirs, their_entropy = trl_chunked.apply(
        x["student_hidden"],
        x["student_weight"],
        None,
        x["teacher_hidden"],
        x["teacher_weight"],
        None,
        beta,
        temperature,
    )
    ours, our_entropy = chunked_per_token_divergence(
        **x, divergence="jsd", beta=beta, temperature=temperature, chunk_size=7, return_entropy=True
    )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_entropy, their_entropy, atol=1e-5, rtol=1e-5)
    leaves = student_leaves(x)
    for g_ours, g_theirs in zip(grads(ours, leaves), grads(theirs, leaves)):
        torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=1e-5)


def test_chunked_matches_trl_with_scale_and_softcap(trl_chunked):
    x = head_inputs(seed=6)
    theirs, their_entropy = trl_chunked.apply(
        x["student_hidden"], x["student_weight"], None, x["teacher_hidden"], x["teacher_weight"], None,
        0.3, 0.8, 1.7, 4.0, 0.6, 3.0,
    )  # fmt: skip
    ours, our_entropy = chunked_per_token_divergence(
        **x, divergence="jsd", beta=0.3, temperature=0.8, student_logit_scale=1.7, student_softcap=4.0,
        teacher_logit_scale=0.6, teacher_softcap=3.0, chunk_size=10, return_entropy=True,
    )  # fmt: skip
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_entropy, their_entropy, atol=1e-5, rtol=1e-5)
    leaves = student_leaves(x)
    for g_ours, g_theirs in zip(grads(ours, leaves), grads(theirs, leaves)):
        torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# 3. Chunked vs dense.
# ----------------------------------------------------------------------------------------------------------------------

BETA_FOR = {"fkl": 0.5, "rkl": 0.5, "jsd": 0.3, "tvd": 0.5}  # an asymmetric β catches a swapped JSD convention


def token_weights(n=53, seed=7):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=g) * 2
    w[::4] = 0.0  # exact zeros
    return w


#: Tolerance of a float32 result against a float64 reference, in float32 ulps (2**-23) of the largest entry of the
#: reference. A float32 computation over V = 97 terms rounds to ~1-3 such ulps (measured: the closed-form gradients
#: and autograd through the dense float32 log-softmax both stay under 3 on an Intel and an AMD EPYC machine); 32
#: leaves room for other processors' kernels while a wrong formula is off by O(1).
FLOAT32_ULPS = 32


def assert_float32_close(actual, reference64, ulps=FLOAT32_ULPS, name="value"):
    """``|actual − reference64| ≤ ulps · 2**-23 · max(1, max|reference64|)`` element-wise."""
    bound = ulps * torch.finfo(torch.float32).eps * max(1.0, reference64.abs().max().item())
    error = (actual.double() - reference64).abs().max().item()
    assert error <= bound, f"{name}: max error {error:.3g} against float64 exceeds {bound:.3g} ({ulps} float32 ulps)"


def float64_copy(x):
    """The inputs as float64 leaves (the student's still require grad), for a float64 reference."""
    return {k: v.detach().double().requires_grad_(v.requires_grad) for k, v in x.items()}


def dense_reference64(x, divergence, beta, temperature, weights=None):
    """The dense divergence computed in float64 throughout (the library's pure formulas on float64 log-probs)."""
    z_s = x["student_hidden"] @ x["student_weight"].t()
    if "student_bias" in x:
        z_s = z_s + x["student_bias"]
    z_t = x["teacher_hidden"] @ x["teacher_weight"].t()
    log_p_s, log_p_t = (z_s / temperature).log_softmax(-1), (z_t / temperature).log_softmax(-1)
    values = divergence_from_log_probs(log_p_s, log_p_t, divergence, beta)
    return values if weights is None else values * weights.double()


def dense_reference(x, divergence, beta, temperature, weights=None, vocab_size=None, transforms=(None, None)):
    z_s = x["student_hidden"] @ x["student_weight"].t()
    if "student_bias" in x:
        z_s = z_s + x["student_bias"]
    z_t = x["teacher_hidden"] @ x["teacher_weight"].t()
    if vocab_size is not None:
        z_s, z_t = z_s[:, :vocab_size], z_t[:, :vocab_size]
    if transforms[0] is not None:
        z_s = transforms[0](z_s)
    if transforms[1] is not None:
        z_t = transforms[1](z_t)
    values = per_token_divergence(z_s, z_t, divergence, beta=beta, temperature=temperature)
    return values if weights is None else values * weights


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_chunked_equals_dense_values_and_grads(divergence, chunk_size):
    x = head_inputs(seed=8, bias=True)
    weights = token_weights()
    beta = BETA_FOR[divergence]
    ours = chunked_per_token_divergence(
        **x, divergence=divergence, beta=beta, temperature=0.7, token_weights=weights, chunk_size=chunk_size
    )
    ref = dense_reference(x, divergence, beta, 0.7, weights)
    x64 = float64_copy(x)
    ref64 = dense_reference64(x64, divergence, beta, 0.7, weights)
    assert ours.dtype == torch.float32 and ours.shape == (53,)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert_float32_close(ours, ref64.detach())
    assert (ours[weights == 0] == 0).all()
    assert (ref[weights != 0].abs() > 1e-4).all()  # a meaningful comparison: values are not all ~0

    # Gradients against float64: both float32 paths (closed form, autograd through the dense log-softmax) round
    # differently, so they are each held to the float64 truth rather than to each other.
    g_ours, g_ref = grads(ours, student_leaves(x)), grads(ref, student_leaves(x))
    g_64 = grads(ref64, student_leaves(x64))
    for name, a, b, c in zip(("hidden", "weight", "bias"), g_ours, g_ref, g_64):
        assert_float32_close(a, c, name=f"grad {name}")
        assert_float32_close(b, c, name=f"dense grad {name}")
    grad_h = g_ours[0]
    assert torch.equal(grad_h[weights == 0], torch.zeros_like(grad_h[weights == 0]))
    assert (grad_h[weights != 0].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_chunked_gradient_is_float32_accurate_where_the_student_is_peaked(divergence):
    """A student sure of a token the teacher rules out: RKL's D is ~21 nats and ``log p_S − log p_T − D`` cancels at
    that token. The plain float32 weighted sum put the gradient 350 ulps off there; shifted by the log-ratio at the
    student's top token it is within one (``_rkl_and_gradient``); 8 ulps bound them all."""
    g = torch.Generator().manual_seed(3)
    n, v = 64, 97
    z_s, z_t = torch.randn(n, v, generator=g), torch.randn(n, v, generator=g)
    top = torch.randint(0, v, (n,), generator=g)
    z_s[torch.arange(n), top] += 12.0
    z_t[torch.arange(n), top] -= 8.0
    h_s, eye = z_s.clone().requires_grad_(), torch.eye(v)  # identity heads: the hidden states are the logits
    values = chunked_per_token_divergence(h_s, z_t, eye, eye, divergence, beta=0.3, temperature=0.7)
    (grad,) = torch.autograd.grad(values.sum(), h_s)
    z64 = z_s.double().requires_grad_()
    log_p_s, log_p_t = (z64 / 0.7).log_softmax(-1), (z_t.double() / 0.7).log_softmax(-1)
    values64 = divergence_from_log_probs(log_p_s, log_p_t, divergence, beta=0.3)
    (grad64,) = torch.autograd.grad(values64.sum(), z64)
    assert_float32_close(values, values64.detach())
    assert_float32_close(grad, grad64, ulps=8, name="grad")


def test_chunked_backward_skips_zero_weight_rows(monkeypatch):
    """Documented: rows of weight 0 are not recomputed in the backward pass (hard token selection saves work)."""
    from trl_opd.divergences import engine as divergences

    seen = []
    original = divergences._ChunkSpec.evaluate

    def counting(self, h_s, *args, **kwargs):
        seen.append(h_s.shape[0])
        return original(self, h_s, *args, **kwargs)

    monkeypatch.setattr(divergences._ChunkSpec, "evaluate", counting)
    x = head_inputs(seed=9)
    weights = token_weights()
    values = chunked_per_token_divergence(**x, divergence="jsd", token_weights=weights, chunk_size=7)
    assert sum(seen) == 53  # the forward pass sees every row
    seen.clear()
    values.sum().backward()
    assert sum(seen) == int((weights != 0).sum())  # 39 of 53 rows
    assert max(seen) <= 7  # still chunked


def test_chunked_default_chunk_and_no_weights_equal_dense():
    x = head_inputs(seed=9)
    ours = chunked_per_token_divergence(**x, divergence="jsd", beta=0.5)
    torch.testing.assert_close(ours, dense_reference(x, "jsd", 0.5, 1.0), atol=1e-5, rtol=1e-5)


def test_chunked_teacher_gets_no_gradient():
    x = head_inputs(seed=10)
    x["teacher_hidden"].requires_grad_()
    x["teacher_weight"].requires_grad_()
    chunked_per_token_divergence(**x, divergence="rkl", chunk_size=8).sum().backward()
    assert x["teacher_hidden"].grad is None and x["teacher_weight"].grad is None
    assert x["student_hidden"].grad is not None and x["student_weight"].grad is not None


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_chunked_vocab_size_slices_padded_heads(divergence):
    beta = BETA_FOR[divergence]
    # Teacher head padded to 101 rows, student 97.
    x = head_inputs(seed=11, v=97, v_t=101)
    ours = chunked_per_token_divergence(**x, divergence=divergence, beta=beta, vocab_size=97, chunk_size=9)
    ref = dense_reference(x, divergence, beta, 1.0, vocab_size=97)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # The padded teacher rows matter: including them (as extra student-less columns) would change the answer.
    z_t_full = x["teacher_hidden"] @ x["teacher_weight"].t()
    assert (z_t_full[:, :97].logsumexp(-1) - z_t_full.logsumexp(-1)).abs().max() > 1e-3

    # Student head (and bias) padded to 101 rows, teacher 97: padded rows get no gradient.
    x = head_inputs(seed=12, v=101, v_t=97, bias=True)
    ours = chunked_per_token_divergence(**x, divergence=divergence, beta=beta, vocab_size=97, chunk_size=9)
    ref = dense_reference(x, divergence, beta, 1.0, vocab_size=97)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    leaves = student_leaves(x)
    g_ours, g_ref = grads(ours, leaves), grads(ref, leaves)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(g_ours[1][97:], torch.zeros(4, 16))
    assert torch.equal(g_ours[2][97:], torch.zeros(4))


def test_chunked_vocab_mismatch_requires_vocab_size():
    x = head_inputs(seed=13, v=97, v_t=101)
    with pytest.raises(ValueError, match="vocab_size"):
        chunked_per_token_divergence(**x)
    with pytest.raises(ValueError, match="vocab_size"):
        chunked_per_token_divergence(**x, vocab_size=98)  # larger than the student's 97 rows


def test_chunked_row_mismatch_raises():
    x = head_inputs(seed=14)
    x["teacher_hidden"] = x["teacher_hidden"][:-1]
    with pytest.raises(ValueError, match="rows"):
        chunked_per_token_divergence(**x)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_chunked_logit_scale_and_softcap(divergence):
    beta = BETA_FOR[divergence]
    x = head_inputs(seed=15, bias=True)
    s_scale, s_cap, t_scale, t_cap = 1.7, 4.0, 0.6, 3.0

    def student_transform(z):
        return s_cap * torch.tanh(s_scale * z / s_cap)

    def teacher_transform(z):
        return t_cap * torch.tanh(t_scale * z / t_cap)

    ours = chunked_per_token_divergence(
        **x, divergence=divergence, beta=beta, temperature=0.8, student_logit_scale=s_scale, student_softcap=s_cap,
        teacher_logit_scale=t_scale, teacher_softcap=t_cap, chunk_size=6,
    )  # fmt: skip
    ref = dense_reference(x, divergence, beta, 0.8, transforms=(student_transform, teacher_transform))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # The transforms change the answer (so the comparison above tests them).
    plain = dense_reference(x, divergence, beta, 0.8)
    assert (plain - ref).abs().max() > 1e-2
    leaves = student_leaves(x)
    for a, b in zip(grads(ours, leaves), grads(ref, leaves)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    # Scale without softcap: z -> scale * z.
    ours = chunked_per_token_divergence(
        **x, divergence=divergence, beta=beta, student_logit_scale=s_scale, teacher_logit_scale=t_scale
    )
    ref = dense_reference(x, divergence, beta, 1.0, transforms=(lambda z: s_scale * z, lambda z: t_scale * z))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_chunked_return_entropy():
    x = head_inputs(seed=16, bias=True)
    weights = token_weights()
    values, entropy = chunked_per_token_divergence(
        **x, divergence="jsd", temperature=0.7, token_weights=weights, chunk_size=5, return_entropy=True
    )
    z_s = (x["student_hidden"] @ x["student_weight"].t() + x["student_bias"]).detach() / 0.7
    dense_entropy = -(z_s.softmax(-1) * z_s.log_softmax(-1)).sum(-1)
    assert entropy.shape == (53,) and entropy.dtype == torch.float32
    # The entropy is the student's, unweighted, and carries no gradient.
    torch.testing.assert_close(entropy, dense_entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, entropy_from_logits(z_s * 0.7, temperature=0.7), atol=1e-5, rtol=1e-5)
    assert not entropy.requires_grad
    torch.testing.assert_close(values, dense_reference(x, "jsd", 0.5, 0.7, weights), atol=1e-5, rtol=1e-5)
    # Without return_entropy a single tensor comes back.
    assert isinstance(chunked_per_token_divergence(**x), torch.Tensor)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_chunked_bfloat16_close_to_float32(divergence):
    beta = BETA_FOR[divergence]
    x = head_inputs(seed=17)
    with torch.no_grad():  # logits of std ~1: divergences of order 1, so bf16 rounding stays below the tolerance
        x["student_weight"] *= 0.5
        x["teacher_weight"] *= 0.5
    fp32 = chunked_per_token_divergence(**x, divergence=divergence, beta=beta, chunk_size=16)
    x16 = {k: v.detach().bfloat16().requires_grad_(v.requires_grad) for k, v in x.items()}
    bf16 = chunked_per_token_divergence(**x16, divergence=divergence, beta=beta, chunk_size=16)
    assert bf16.dtype == torch.float32
    assert torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16, fp32.detach(), atol=2e-2, rtol=0)
    g = grads(bf16, student_leaves(x16))
    assert all(gi.dtype == torch.bfloat16 and torch.isfinite(gi).all() for gi in g)


# ----------------------------------------------------------------------------------------------------------------------
# 4. Robustness of the dense path.
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_huge_logits_are_finite(divergence):
    g = torch.Generator().manual_seed(18)
    sign_s = torch.randint(0, 2, (4, 8), generator=g) * 2 - 1
    sign_t = torch.randint(0, 2, (4, 8), generator=g) * 2 - 1
    student = (sign_s * 1e4).float().requires_grad_()
    teacher = (sign_t * 1e4).float().requires_grad_()
    values = per_token_divergence(student, teacher, divergence, beta=0.3)
    assert torch.isfinite(values).all()
    assert (values >= -1e-6).all()
    values.sum().backward()
    assert torch.isfinite(student.grad).all() and torch.isfinite(teacher.grad).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_masked_vocabulary_equals_unmasked_columns(divergence, temperature):
    beta = BETA_FOR[divergence]
    student, teacher = random_logits(3, 9, seed=19), random_logits(3, 9, seed=20)
    masked = torch.tensor([1, 4, 8])
    keep = torch.tensor([0, 2, 3, 5, 6, 7])
    s_masked, t_masked = student.clone(), teacher.clone()
    s_masked[:, masked] = -math.inf
    t_masked[:, masked] = -math.inf
    s_masked.requires_grad_()

    values = per_token_divergence(s_masked, t_masked, divergence, beta=beta, temperature=temperature)
    assert torch.isfinite(values).all()
    # The masked columns must drop out exactly: the float64 divergence over the kept columns is the reference.
    s64 = student[:, keep].double().requires_grad_()
    log_p_s, log_p_t = (s64 / temperature).log_softmax(-1), (teacher[:, keep].double() / temperature).log_softmax(-1)
    reference64 = divergence_from_log_probs(log_p_s, log_p_t, divergence, beta)
    assert_float32_close(values, reference64.detach())

    values.sum().backward()
    reference64.sum().backward()
    assert torch.isfinite(s_masked.grad).all()
    assert torch.equal(s_masked.grad[:, masked], torch.zeros(3, 3))
    assert_float32_close(s_masked.grad[:, keep], s64.grad, name="grad")


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_one_hot_identical_distributions_are_zero(divergence):
    student = torch.full((2, 5), -math.inf)
    student[0, 3] = 2.0
    student[1, 0] = -7.0
    teacher = student.clone()
    student.requires_grad_()
    values = per_token_divergence(student, teacher, divergence, beta=0.3)
    # JSD's log M = logaddexp(log p + log β, log p + log(1 − β)) rounds, so allow float32 noise.
    torch.testing.assert_close(values, torch.zeros(2), atol=1e-6, rtol=0)
    values.sum().backward()
    assert torch.isfinite(student.grad).all()


def test_disjoint_supports_jsd_is_log_2():
    student = torch.tensor([0.0, -math.inf, 1.0, -math.inf])
    teacher = torch.tensor([-math.inf, 0.0, -math.inf, 3.0])
    assert per_token_divergence(student, teacher, "jsd", beta=0.5).item() == pytest.approx(math.log(2), abs=1e-6)
    assert per_token_divergence(student, teacher, "tvd").item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_bfloat16_logits(divergence):
    beta = BETA_FOR[divergence]
    # Logits of std 1.5: divergences of order 1, so bf16 rounding of the logits stays below the tolerance.
    student, teacher = random_logits(4, 6, 13, scale=1.5, seed=21), random_logits(4, 6, 13, scale=1.5, seed=22)
    fp32 = per_token_divergence(student, teacher, divergence, beta=beta)
    bf16 = per_token_divergence(student.bfloat16(), teacher.bfloat16(), divergence, beta=beta)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16, fp32, atol=2e-2, rtol=0)
    # Computed in float32 from the rounded logits: identical to upcasting them first.
    upcast = per_token_divergence(student.bfloat16().float(), teacher.bfloat16().float(), divergence, beta=beta)
    torch.testing.assert_close(bf16, upcast, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_output_dtype_is_float32(dtype):
    student, teacher = random_logits(3, 7, seed=23).to(dtype), random_logits(3, 7, seed=24).to(dtype)
    for divergence in DIVERGENCES:
        assert per_token_divergence(student, teacher, divergence).dtype == torch.float32


@pytest.mark.parametrize("shape", [(7,), (4, 7), (2, 3, 7)])
def test_output_shape(shape):
    student, teacher = random_logits(*shape, seed=25), random_logits(*shape, seed=26)
    for divergence in DIVERGENCES:
        values = per_token_divergence(student, teacher, divergence)
        assert values.shape == shape[:-1]
    # Each position is computed independently: the 3-D result equals the row-by-row one.
    if len(shape) == 3:
        rows = torch.stack(
            [per_token_divergence(s, t, "jsd") for s, t in zip(student.view(-1, 7), teacher.view(-1, 7))]
        )
        torch.testing.assert_close(per_token_divergence(student, teacher, "jsd").view(-1), rows, atol=1e-7, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# 5. Properties (hypothesis).
# ----------------------------------------------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)
logit = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False, width=32)
logit_pairs = st.integers(2, 12).flatmap(
    lambda v: st.tuples(st.lists(logit, min_size=v, max_size=v), st.lists(logit, min_size=v, max_size=v))
)
betas = st.floats(0.0, 1.0, allow_nan=False)
temperatures = st.sampled_from([0.5, 1.0, 2.0])


def all_divergences(student, teacher, beta, temperature=1.0):
    return {
        name: per_token_divergence(student, teacher, name, beta=beta, temperature=temperature).item()
        for name in DIVERGENCES
    }


@PROPERTY_SETTINGS
@given(pair=logit_pairs, beta=betas, temperature=temperatures)
def test_property_nonnegative_and_bounded(pair, beta, temperature):
    student, teacher = torch.tensor(pair[0]), torch.tensor(pair[1])
    values = all_divergences(student, teacher, beta, temperature)
    for name, value in values.items():
        assert value >= -1e-6, name
    assert values["tvd"] <= 1.0 + 1e-6
    assert per_token_divergence(student, teacher, "jsd", beta=0.5, temperature=temperature).item() <= math.log(2) + 1e-6


# Logits on a 1/64 grid and integer shifts: adding the shift is exact in float32, so any non-zero result is the
# library's error, not rounding of the inputs.
grid_logit = st.integers(-640, 640).map(lambda k: k / 64)
grid_vectors = st.integers(2, 12).flatmap(lambda v: st.lists(grid_logit, min_size=v, max_size=v))


@PROPERTY_SETTINGS
@given(logits=grid_vectors, shift=st.integers(-50, 50), beta=betas, temperature=temperatures)
def test_property_zero_for_equal_distributions(logits, shift, beta, temperature):
    student = torch.tensor(logits)
    for teacher in (student.clone(), student + shift):
        for name, value in all_divergences(student, teacher, beta, temperature).items():
            assert value == pytest.approx(0.0, abs=1e-6), (name, shift)


@PROPERTY_SETTINGS
@given(pair=logit_pairs, beta=st.floats(0.05, 0.95), temperature=temperatures)
def test_property_positive_when_distributions_differ(pair, beta, temperature):
    student, teacher = torch.tensor(pair[0]), torch.tensor(pair[1])
    gap = ((student.double() / temperature).softmax(-1) - (teacher.double() / temperature).softmax(-1)).abs().max()
    assume(gap > 1e-2)  # hypothesis draws pairs until the distributions differ: every example checks
    values = all_divergences(student, teacher, beta, temperature)
    # Pinsker: KL >= 2 TV^2 >= 2e-4 and TV >= max gap, far above float32 rounding; JSD_β >= 2 β (1 − β) TV^2 >= 9.5e-6.
    assert values["fkl"] > 0 and values["rkl"] > 0 and values["tvd"] > 0
    assert values["jsd"] > 0


@PROPERTY_SETTINGS
@given(pair=logit_pairs, temperature=temperatures)
def test_property_jsd_endpoints_are_fkl_and_rkl(pair, temperature):
    student, teacher = torch.tensor(pair[0]), torch.tensor(pair[1])
    values = all_divergences(student, teacher, 0.0, temperature)
    jsd_0 = per_token_divergence(student, teacher, "jsd", beta=0.0, temperature=temperature).item()
    jsd_1 = per_token_divergence(student, teacher, "jsd", beta=1.0, temperature=temperature).item()
    assert jsd_0 == pytest.approx(values["fkl"], abs=1e-6)
    assert jsd_1 == pytest.approx(values["rkl"], abs=1e-6)


# β in (0, 1) away from the ends: for β = 1e-190, 1 − β rounds to 1.0 and switches to the RKL endpoint, while
# JSD_β → 0 as β → 0 (the endpoints are TRL's convention, not limits of the formula).
symmetric_betas = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(1e-3, 1.0 - 1e-3))


@PROPERTY_SETTINGS
@given(pair=logit_pairs, beta=symmetric_betas, temperature=temperatures)
def test_property_swap_symmetries(pair, beta, temperature):
    student, teacher = torch.tensor(pair[0]), torch.tensor(pair[1])
    forward = all_divergences(student, teacher, beta, temperature)
    swapped = all_divergences(teacher, student, 1.0 - beta, temperature)
    # JSD_β(teacher, student) == JSD_{1−β}(student, teacher): the mixture M is the same.
    assert forward["jsd"] == pytest.approx(swapped["jsd"], abs=1e-5, rel=1e-5)
    assert forward["fkl"] == pytest.approx(swapped["rkl"], abs=1e-5, rel=1e-5)
    assert forward["tvd"] == pytest.approx(swapped["tvd"], abs=1e-6)


@PROPERTY_SETTINGS
@given(pair=logit_pairs, beta=betas, temperature=st.floats(0.25, 4.0))
def test_property_temperature_divides_logits(pair, beta, temperature):
    student, teacher = torch.tensor(pair[0], dtype=torch.float64), torch.tensor(pair[1], dtype=torch.float64)
    for name in DIVERGENCES:
        a = per_token_divergence(student, teacher, name, beta=beta, temperature=temperature).item()
        b = per_token_divergence(student / temperature, teacher / temperature, name, beta=beta).item()
        assert a == pytest.approx(b, abs=1e-5, rel=1e-5), name


# ----------------------------------------------------------------------------------------------------------------------
# 6. Errors.
# ----------------------------------------------------------------------------------------------------------------------


def test_unknown_divergence_lists_allowed_names():
    student, teacher = random_logits(2, 5, seed=27), random_logits(2, 5, seed=28)
    calls = [
        lambda: per_token_divergence(student, teacher, "kl"),
        lambda: chunked_per_token_divergence(**head_inputs(n=4, v=7), divergence="kl"),
        lambda: divergence_from_log_probs(student.log_softmax(-1), teacher.log_softmax(-1), "kl"),
    ]
    for call in calls:
        with pytest.raises(ValueError) as info:
            call()
        for name in ("'fkl'", "'rkl'", "'jsd'", "'tvd'"):
            assert name in str(info.value)


@pytest.mark.parametrize("beta", [-0.1, 1.1, 2.0, float("nan")])
def test_beta_out_of_range_raises(beta):
    student, teacher = random_logits(2, 5, seed=29), random_logits(2, 5, seed=30)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        per_token_divergence(student, teacher, "jsd", beta=beta)
    with pytest.raises(ValueError, match="beta"):
        chunked_per_token_divergence(**head_inputs(n=4, v=7), divergence="jsd", beta=beta)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_nonpositive_temperature_raises(temperature):
    student, teacher = random_logits(2, 5, seed=31), random_logits(2, 5, seed=32)
    with pytest.raises(ValueError, match="temperature"):
        per_token_divergence(student, teacher, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        chunked_per_token_divergence(**head_inputs(n=4, v=7), temperature=temperature)


@pytest.mark.parametrize("teacher_shape", [(2, 6), (2, 4), (3, 5), (5,)])
def test_shape_mismatch_raises(teacher_shape):
    student, teacher = random_logits(2, 5, seed=33), random_logits(*teacher_shape, seed=34)
    with pytest.raises(ValueError, match="vocabular"):
        per_token_divergence(student, teacher)


def test_bad_chunk_vocab_and_temperature_arguments_are_refused():
    h, w = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        chunked_per_token_divergence(h, h, w, w, "fkl", chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        chunked_per_token_divergence(h, h, w, w, "fkl", chunk_size=-1)
    with pytest.raises(ValueError, match="vocab_size=0 must be in"):
        chunked_per_token_divergence(h, h, w, w, "fkl", vocab_size=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        per_token_divergence(h, h, "fkl", temperature=float("nan"))


def test_mode_covering_versus_mode_seeking_on_a_family_that_cannot_fit_the_teacher():
    # docs/divergences.md: uniform U vs a student locked on one mode P, against the bimodal teacher.
    teacher = torch.tensor([0.45, 0.05, 0.45, 0.05]).log()
    uniform = torch.tensor([0.25, 0.25, 0.25, 0.25]).log()
    peaked = torch.tensor([0.85, 0.05, 0.05, 0.05]).log()
    fkl_u, fkl_p = (per_token_divergence(s, teacher, "fkl").item() for s in (uniform, peaked))
    rkl_u, rkl_p = (per_token_divergence(s, teacher, "rkl").item() for s in (uniform, peaked))
    assert (fkl_u, fkl_p) == (pytest.approx(0.368064, abs=1e-5), pytest.approx(0.702556, abs=1e-5))
    assert (rkl_u, rkl_p) == (pytest.approx(0.510826, abs=1e-5), pytest.approx(0.430729, abs=1e-5))
    assert fkl_u < fkl_p and rkl_p < rkl_u


@pytest.mark.parametrize("divergence", ["fkl", "rkl", "jsd", "tvd"])
def test_fused_loss_equals_the_per_token_path(divergence):
    from trl_opd.divergences import chunked_divergence_loss

    torch.manual_seed(3)
    h_s = torch.randn(37, 8, requires_grad=True)
    w_s = torch.randn(23, 8, requires_grad=True)
    b_s = torch.randn(23, requires_grad=True)
    h_t, w_t = torch.randn(37, 12), torch.randn(23, 12)
    weights = torch.rand(37)
    weights[::3] = 0.0
    reference = (
        chunked_per_token_divergence(h_s, h_t, w_s, w_t, divergence, 0.3, 1.3, student_bias=b_s, chunk_size=5) * weights
    ).sum() / 7.0
    expected = torch.autograd.grad(reference, [h_s, w_s, b_s])
    loss, values, entropy = chunked_divergence_loss(
        h_s, h_t, w_s, w_t, divergence, 0.3, 1.3, student_bias=b_s, token_weights=weights, normalizer=7.0, chunk_size=5
    )
    got = torch.autograd.grad(3.0 * loss, [h_s, w_s, b_s])  # the upstream gradient scales the stored one
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-7)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, 3.0 * e, atol=1e-5, rtol=1e-5)
    dense = per_token_divergence(h_s @ w_s.T + b_s, h_t @ w_t.T, divergence, 0.3, 1.3)
    torch.testing.assert_close(values, dense.detach(), atol=1e-5, rtol=1e-5)
    assert not values.requires_grad and not entropy.requires_grad


@pytest.mark.parametrize(
    ("divergence", "beta"), [("fkl", 0.5), ("rkl", 0.5), ("jsd", 0.3), ("jsd", 0.0), ("jsd", 1.0), ("tvd", 0.5)]
)
def test_fused_loss_gradient_equals_dense_autograd(divergence, beta):
    """The fused loss's analytic logit gradient against autograd through dense logits, with everything switched on:
    student bias, logit scale and softcap on both heads, temperature, a teacher head padded past the vocabulary,
    token weights with zeros, a tensor normalizer and several chunks."""
    from trl_opd.divergences import chunked_divergence_loss

    x = head_inputs(seed=21, v=97, v_t=101, bias=True)
    weights = token_weights()
    s_scale, s_cap, t_scale, t_cap = 1.3, 5.0, 0.8, 4.0
    transforms = (lambda z: s_cap * torch.tanh(s_scale * z / s_cap), lambda z: t_cap * torch.tanh(t_scale * z / t_cap))
    ref = dense_reference(x, divergence, beta, 0.6, weights, vocab_size=97, transforms=transforms).sum() / 11.0
    leaves = student_leaves(x)
    expected = torch.autograd.grad(ref, leaves)
    loss, _, _ = chunked_divergence_loss(
        **x, divergence=divergence, beta=beta, temperature=0.6, token_weights=weights, normalizer=torch.tensor(11.0),
        student_logit_scale=s_scale, student_softcap=s_cap, teacher_logit_scale=t_scale, teacher_softcap=t_cap,
        vocab_size=97, chunk_size=10,
    )  # fmt: skip
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    got = torch.autograd.grad(loss, leaves)
    for name, e, g in zip(("hidden", "weight", "bias"), expected, got, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"grad {name}: {m}")
    assert got[1].abs().sum() > 0 and got[0][weights == 0].abs().sum() == 0


def test_fused_loss_backward_twice_is_refused():
    from trl_opd.divergences import chunked_divergence_loss

    x = head_inputs(seed=22)
    loss = chunked_divergence_loss(**x, divergence="jsd")[0]
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward twice"):
        loss.backward()


# ----------------------------------------------------------------------------------------------------------------------
# A teacher that gives a token exactly zero probability (a -inf logit) where the student does not.
# ----------------------------------------------------------------------------------------------------------------------

ZERO_TEACHER = [0.5, 0.5, 0.0]
STUDENT_ON_IT = [0.25, 0.25, 0.5]


def zero_teacher_by_hand(divergence, beta=0.5):
    p_t, p_s = ZERO_TEACHER, STUDENT_ON_IT
    if divergence == "rkl":  # the true value is +inf; the teacher's log-probability is floored at log(float32 tiny)
        floor = math.log(torch.finfo(torch.float32).tiny)
        return 2 * 0.25 * math.log(0.25 / 0.5) + 0.5 * (math.log(0.5) - floor)  # 42.97513
    m = [beta * t + (1 - beta) * s for t, s in zip(p_t, p_s)]
    if divergence == "jsd":  # finite: M > 0 wherever the student puts mass
        return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)
    if divergence == "fkl":
        return kl(p_t, p_s)
    return 0.5 * sum(abs(a - b) for a, b in zip(p_t, p_s))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_teacher_zero_probability_gives_finite_exact_values_and_gradients(divergence):
    teacher = torch.tensor([[math.log(0.5), math.log(0.5), -math.inf]])
    student = torch.tensor([[math.log(0.25), math.log(0.25), math.log(0.5)]], requires_grad=True)
    expected = zero_teacher_by_hand(divergence)
    dense = per_token_divergence(student, teacher, divergence, beta=0.5)
    assert dense.item() == pytest.approx(expected, rel=1e-5)
    (grad,) = torch.autograd.grad(dense.sum(), student)
    assert torch.isfinite(grad).all()
    # The chunked engine (identity heads; the teacher's head masks the token with a -inf bias) agrees.
    h_s, eye = student.detach().clone().requires_grad_(), torch.eye(3)
    teacher_head = LMHead(eye, bias=torch.tensor([0.0, 0.0, -math.inf]))
    h_t = torch.tensor([[math.log(0.5), math.log(0.5), 0.0]])
    chunked = chunked_per_token_divergence(h_s, h_t, eye, teacher_head, divergence, beta=0.5)
    assert chunked.item() == pytest.approx(expected, rel=1e-5)
    (chunked_grad,) = torch.autograd.grad(chunked.sum(), h_s)
    assert torch.isfinite(chunked_grad).all()
    torch.testing.assert_close(chunked_grad, grad, atol=1e-5, rtol=1e-5)


def test_rkl_zero_teacher_hand_value():
    assert zero_teacher_by_hand("rkl") == pytest.approx(42.97513, abs=1e-4)
    assert zero_teacher_by_hand("jsd") == pytest.approx(0.215762, abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# The registry's facts about each divergence.
# ----------------------------------------------------------------------------------------------------------------------


def test_the_registry_says_how_much_of_each_divergence_is_reverse_kl():
    from trl_opd.divergences import REGISTRY, reverse_kl_share

    assert [reverse_kl_share(name, 0.25) for name in ("fkl", "rkl", "jsd", "tvd")] == [0.0, 1.0, 0.25, 0.0]
    assert reverse_kl_share("jsd", 1.0) == 1.0  # TRL's convention: JSD at β = 1 is the reverse KL
    assert [REGISTRY[name].describe(0.5) for name in DIVERGENCES] == [
        "forward KL",
        "reverse KL",
        "generalized JSD(β = 0.5)",
        "total variation",
    ]
    with pytest.raises(ValueError, match="Unknown divergence 'kl'"):
        reverse_kl_share("kl")


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "8"])
def test_one_rule_refuses_a_bad_top_k_in_the_engine_as_in_the_config(bad):
    from trl_opd.divergences import check_top_k

    with pytest.raises(ValueError, match="teacher_top_k must be a positive integer or None"):
        check_top_k(bad)
    hidden, head = torch.randn(3, 8), torch.randn(11, 8)
    with pytest.raises(ValueError, match="teacher_top_k must be a positive integer or None"):
        chunked_per_token_divergence(hidden, hidden, head, head, "fkl", teacher_top_k=bad)
