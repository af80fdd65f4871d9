"""Tests of the KL(q || p) estimators in :mod:`bbh.kl` (paper Eq. 1 closed form, Eq. 2 nearest neighbour).

Accuracy tests of the nearest-neighbour estimators compare with the analytic KL of Gaussians. Their
tolerances come from the spread of the estimator measured over 16 seeds (see the comments next to each
tolerance), and every accuracy test also checks that plausible broken variants of Eq. 2 (missing
log(m / (n - 1)), wrong sign of the log-ratio, wrong dimension factor, log of squared distances) would land
outside the tolerance, so the tests can fail for those bugs.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

import bbh
from bbh.core.priors import NormalPrior
from bbh.kl import (
    DISTANCE_EPS,
    KL_ESTIMATORS,
    KLEstimator,
    NearestNeighbourKL,
    flatten_samples,
    gaussian_kl,
    make_kl_estimator,
    nn_kl_full,
    nn_kl_per_weight,
    nn_kl_per_weight_reference,
)

F64 = torch.float64


# ----------------------------------------------------------------------------------------- gaussian_kl
def test_gaussian_kl_hand_computed():
    # KL(N(1, 0.5^2) || N(0, 1)) = log(1 / 0.5) + (0.25 + 1) / 2 - 1/2
    mu, sigma = torch.tensor([1.0], dtype=F64), torch.tensor([0.5], dtype=F64)
    expected = math.log(2.0) + 1.25 / 2 - 0.5
    assert gaussian_kl(mu, sigma).item() == pytest.approx(expected, rel=1e-12)
    # Prior scale 2: log(2 / 0.5) + (0.25 + 1) / (2 * 4) - 1/2
    expected_s2 = math.log(4.0) + 1.25 / 8 - 0.5
    assert gaussian_kl(mu, sigma, prior_scale=2.0).item() == pytest.approx(expected_s2, rel=1e-12)
    # Summed over elements: two different scalars.
    mu2, sigma2 = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64)
    expected2 = expected + (math.log(1 / 2.0) + 4.0 / 2 - 0.5)
    assert gaussian_kl(mu2, sigma2).item() == pytest.approx(expected2, rel=1e-12)


def test_gaussian_kl_zero_when_posterior_equals_prior():
    scale = 0.3
    mu = torch.zeros(7, dtype=F64)
    sigma = torch.full((7,), scale, dtype=F64)
    assert gaussian_kl(mu, sigma, prior_scale=scale).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("prior_scale", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_gaussian_kl_matches_torch_distributions(prior_scale, seed):
    g = torch.Generator().manual_seed(seed)
    mu = (torch.randn(4, 5, generator=g, dtype=F64) * 2).requires_grad_()
    sigma = (torch.rand(4, 5, generator=g, dtype=F64) * 3 + 0.05).requires_grad_()
    ours = gaussian_kl(mu, sigma, prior_scale=prior_scale)
    ref = kl_divergence(Normal(mu, sigma), Normal(torch.zeros((), dtype=F64), prior_scale)).sum()
    assert ours.shape == ()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    g_ours = torch.autograd.grad(ours, (mu, sigma))
    g_ref = torch.autograd.grad(ref, (mu, sigma))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_gaussian_kl_broadcasts_sigma():
    mu = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor(0.7, dtype=F64)
    torch.testing.assert_close(gaussian_kl(mu, sigma, 1.5), gaussian_kl(mu, sigma.expand(6), 1.5))


# ----------------------------------------------------------------------------------------- Eq. 2 by hand
def test_nn_kl_per_weight_hand_computed():
    # n = 3 posterior samples, m = 3 prior samples, D = 1.
    # rho (nearest prior sample): 0 -> 0.5, 1 -> 0.5, 3 -> 1 (|3 - 4|)
    # nu (nearest other posterior sample): 0 -> 1, 1 -> 1, 3 -> 2
    # KL = (1/3) * 3 * log(0.5) + log(3 / 2) = log(0.75)
    q = torch.tensor([[0.0], [1.0], [3.0]], dtype=F64)
    p = torch.tensor([[0.5], [4.0], [10.0]], dtype=F64)
    expected = math.log(0.75)
    # The 1e-8 guard inside the square roots changes the distances by ~1e-8 relative at this scale.
    assert nn_kl_per_weight(q, p).item() == pytest.approx(expected, abs=1e-7)
    assert nn_kl_per_weight_reference(q, p).item() == pytest.approx(expected, abs=1e-7)
    # Two identical columns: the per-weight estimator sums the two 1-d estimates (constant included twice).
    q2, p2 = q.repeat(1, 2), p.repeat(1, 2)
    assert nn_kl_per_weight(q2, p2).item() == pytest.approx(2 * expected, abs=1e-7)


def test_nn_kl_full_hand_computed():
    # n = 3, m = 4, d = 2.
    q = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]], dtype=F64)
    p = torch.tensor([[0.0, 2.0], [3.0, 0.0], [10.0, 10.0], [-10.0, -10.0]], dtype=F64)
    # rho: q0 -> 2 (p0), q1 -> sqrt(13) (p0: (3, 2)), q2 -> 1 (p0)
    # nu:  q0 -> 1 (q2), q1 -> sqrt(18) (q2: (3, 3)), q2 -> 1 (q0)
    log_ratio_mean = (math.log(2.0) + 0.5 * math.log(13 / 18) + 0.0) / 3
    expected = 2 * log_ratio_mean + math.log(4 / 2)  # constant added once (Eq. 2), not d times
    assert nn_kl_full(q, p).item() == pytest.approx(expected, abs=1e-7)
    # The authors' variant adds the constant d = 2 times; this implementation must not.
    assert abs(nn_kl_full(q, p).item() - (2 * log_ratio_mean + 2 * math.log(2))) > 0.5


# ----------------------------------------------------------------------------------------- Eq. 2 vs analytic KL
# All accuracy tests draw samples in float64 and multiply every sample (posterior *and* prior) by
# SCALE = 1000. KL is invariant under a common rescaling, and so is Eq. 2 -- except for the authors'
# guard sqrt(delta^2 + 1e-8), which floors distances at 1e-4. With n = 3000 samples of a unit-scale 1-d
# Gaussian the nearest-neighbour spacings are ~1e-4 themselves, and the floor then biases the estimate
# low by ~0.27 nats per weight (measured: D = 1 estimate 0.35 instead of 0.62 at n = m = 4000). At scale
# 1000 the floor is irrelevant (measured mean error with and without the guard agree within 4e-4 nats per
# weight).
SCALE = 1000.0

# n != m so that the constant log(m / (n - 1)) = log(1000 / 2999) = -1.098 is large: a missing constant
# then shifts the estimate by 1.1 nats per dimension. m < n also makes the mean log-ratio large
# (KL_k - log(m/(n-1)) >= 1.1), so a sign error in the log-ratio shifts the estimate by >= 2.2 nats per dim.
N_POST, M_PRIOR = 3000, 1000


def _analytic_kl_diag(mu: Tensor, s: Tensor) -> float:
    """Sum over k of KL(N(mu_k, s_k^2) || N(0, 1))."""
    return float((-torch.log(s) + (s**2 + mu**2) / 2 - 0.5).sum())


def _analytic_kl_full(mu: Tensor, chol: Tensor) -> float:
    """KL(N(mu, L L^T) || N(0, I)) = (tr S + mu^T mu - D - log det S) / 2."""
    cov = chol @ chol.T
    return float(0.5 * (torch.trace(cov) + mu @ mu - mu.numel() - torch.logdet(cov)))


def _per_weight_case(dim: int) -> tuple[Tensor, Tensor]:
    if dim == 1:
        return torch.tensor([0.5], dtype=F64), torch.tensor([0.4], dtype=F64)
    return torch.linspace(-1, 1, dim, dtype=F64), torch.linspace(0.3, 0.8, dim, dtype=F64)


@pytest.mark.parametrize("dim", [1, 3, 10])
def test_nn_kl_per_weight_matches_analytic_gaussian_kl(dim):
    mu, s = _per_weight_case(dim)
    true = _analytic_kl_diag(mu, s)
    torch.manual_seed(1234 + dim)
    q = SCALE * (mu + s * torch.randn(N_POST, dim, dtype=F64))
    p = SCALE * torch.randn(M_PRIOR, dim, dtype=F64)
    est = nn_kl_per_weight(q, p).item()

    # Tolerance: with n = 3000, m = 1000 the estimate's spread over 16 seeds was std 0.062 (D=1),
    # 0.083 (D=3), 0.20 (D=10), i.e. ~0.064 * sqrt(D) (the D 1-d estimates are independent), with a
    # mean error below 0.015 in magnitude and a worst |error| of 0.12, 0.16, 0.35. 0.3 * sqrt(D) is
    # ~4.7 standard deviations and ~2.5x the worst error seen.
    tol = 0.3 * math.sqrt(dim)
    assert abs(est - true) < tol, (est, true)

    # The same samples, broken variants of Eq. 2 -- each must land outside the tolerance.
    const = dim * math.log(M_PRIOR / (N_POST - 1))
    log_ratio = est - const  # the sum over weights of the mean log(rho / nu)
    broken = {
        "missing log(m/(n-1))": log_ratio,
        "sign error in the log-ratio": -log_ratio + const,
        "log of squared distances (factor 2)": 2 * log_ratio + const,
    }
    if dim > 1:
        broken["d = D factor (full-vector d) on per-weight ratios"] = dim * log_ratio + const
    for name, value in broken.items():
        # 1.5 * tol: the broken estimate would miss the analytic value by at least 0.5 * tol more than
        # the tolerance allows, i.e. the bug is caught with a margin of > 2 standard deviations.
        assert abs(value - true) > 1.5 * tol, f"{name}: {value} vs true {true} is not caught by tol {tol}"


# (d, off-diagonal correlation, n, m). m != n so that log(m / (n - 1)) = -/+1.1 is large, and chosen so that
# the mean log-ratio term d * mean log(rho / nu) = KL - log(m / (n - 1)) is >= 1.3 in every case (m < n for
# d = 2, whose KLs are ~1.3-1.6; m > n for d = 5, where that ordering has the smaller spread).
_FULL_CASES = {
    "diag-2": (2, 0.0, 3000, 1000),
    "corr-2": (2, 0.7, 3000, 1000),
    "diag-5": (5, 0.0, 2000, 6000),
    "corr-5": (5, 0.7, 2000, 6000),
}


def _full_case(dim: int, rho: float) -> tuple[Tensor, Tensor]:
    """Mean and Cholesky factor of N(mu, diag(s) R diag(s)), R equicorrelated with coefficient rho."""
    mu = torch.linspace(-0.5, 0.8, dim, dtype=F64)
    s = torch.linspace(0.3, 0.7, dim, dtype=F64)
    corr = torch.full((dim, dim), rho, dtype=F64)
    corr.fill_diagonal_(1.0)
    return mu, torch.linalg.cholesky(s[:, None] * corr * s[None, :])


@pytest.mark.parametrize("case", list(_FULL_CASES))
def test_nn_kl_full_matches_analytic_gaussian_kl(case):
    dim, rho, n, m = _FULL_CASES[case]
    mu, chol = _full_case(dim, rho)
    true = _analytic_kl_full(mu, chol)
    torch.manual_seed(4321 + dim + int(10 * rho))
    q = SCALE * (mu + torch.randn(n, dim, dtype=F64) @ chol.T)
    p = SCALE * torch.randn(m, dim, dtype=F64)
    est = nn_kl_full(q, p).item()

    # Tolerance: over 16 seeds the error had std 0.080 / 0.117 (d = 2, rho = 0 / 0.7; n = 3000, m = 1000)
    # and 0.082 / 0.119 (d = 5; n = 2000, m = 6000), mean error +0.045..+0.064 (the small-sample bias of
    # the 1-NN estimator, larger in higher d), worst |error| 0.17 / 0.24 / 0.19 / 0.27. 0.55 is bias +
    # 4 std for the widest case and 2x the worst error seen.
    tol = 0.55
    assert abs(est - true) < tol, (est, true)

    const = math.log(m / (n - 1))
    assert abs(const) > 1.09
    d_log_ratio = est - const  # d * mean log(rho / nu)
    broken = {
        "missing log(m/(n-1))": d_log_ratio,
        "sign error in the log-ratio": -d_log_ratio + const,
        "d = 1 instead of d = D": d_log_ratio / dim + const,
        "log of squared distances (factor 2)": 2 * d_log_ratio + const,
        "constant added d times (authors' code)": d_log_ratio + dim * const,
    }
    for name, value in broken.items():
        # as above: caught with a margin of at least 0.5 * tol beyond the tolerance
        assert abs(value - true) > 1.5 * tol, f"{name}: {value} vs true {true} is not caught by tol {tol}"


def test_nn_kl_detects_a_wrong_posterior():
    """Positive control: the estimator separates two posteriors whose KLs differ by ~1 nat."""
    torch.manual_seed(7)
    p = SCALE * torch.randn(M_PRIOR, 1, dtype=F64)
    q_close = SCALE * (0.1 + 0.9 * torch.randn(N_POST, 1, dtype=F64))   # KL = 0.0096
    q_far = SCALE * (1.5 + 0.9 * torch.randn(N_POST, 1, dtype=F64))     # KL = 1.1346
    assert nn_kl_per_weight(q_close, p).item() < 0.3 < 0.8 < nn_kl_per_weight(q_far, p).item()


# ----------------------------------------------------------------------------------------- fast == reference
def _grad(fn, q: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    q = q.detach().clone().requires_grad_()
    value = fn(q, p)
    (g,) = torch.autograd.grad(value, q)
    return value.detach(), g


@pytest.mark.parametrize("n, m, dim, chunk, scale", [
    (5, 5, 40, 1 << 22, 1.0),    # the paper's n = m = 5, one chunk
    (5, 5, 40, 7, 1.0),          # several chunks, last one partial (40 = 5 * 7 + 5)
    (6, 3, 13, 4, 1.0),          # m != n, 13 not a multiple of 4
    (2, 1, 9, 1, 1.0),           # smallest legal n and m, one weight per chunk
    (9, 12, 25, 25, 1.0),        # chunk exactly the width
    (3, 4, 7, 3, 1e5),           # huge distances (self-exclusion must not rely on a finite sentinel)
    (4, 4, 6, 4, 1e-3),          # distances near the 1e-4 floor
])
def test_fast_per_weight_matches_reference(n, m, dim, chunk, scale):
    g = torch.Generator().manual_seed(n * 100 + m * 10 + dim)
    q = (torch.randn(n, dim, generator=g, dtype=F64) * 0.3 + 0.2) * scale
    p = torch.randn(m, dim, generator=g, dtype=F64) * scale
    v_fast, g_fast = _grad(lambda a, b: nn_kl_per_weight(a, b, chunk_size=chunk), q, p)
    v_ref, g_ref = _grad(nn_kl_per_weight_reference, q, p)
    torch.testing.assert_close(v_fast, v_ref, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-12)
    assert g_fast.abs().sum() > 0  # not a trivially zero gradient


def test_fast_per_weight_matches_reference_with_isolated_ties():
    # Exact ties whose gradient is well defined: q0 == q1 (a collapsed pair) and q0 == p0 (posterior on a
    # prior sample), while no sample has two distinct nearest neighbours at the same distance (checked by
    # hand: rho of q2..q5 = 5, 6.5, 4.2, 3.2; nu = 1.5, 1.5, 1, 1, all with a unique partner). Columns are copies of
    # the same pattern shifted, so chunking splits tied columns across chunks.
    col_q = torch.tensor([0.0, 0.0, 5.0, 6.5, 10.0, 11.0], dtype=F64)
    col_p = torch.tensor([0.0, 23.0, -7.0, 14.2], dtype=F64)
    shifts = torch.arange(9, dtype=F64) * 0.37
    q = col_q[:, None] + shifts
    p = col_p[:, None] + shifts
    for chunk in (1 << 22, 2):
        v_fast, g_fast = _grad(lambda a, b, c=chunk: nn_kl_per_weight(a, b, chunk_size=c), q, p)
        v_ref, g_ref = _grad(nn_kl_per_weight_reference, q, p)
        assert torch.isfinite(v_fast) and torch.isfinite(g_fast).all()
        torch.testing.assert_close(v_fast, v_ref, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-12)
        # The tied pair has no within-sample push: rho = nu = 1e-4 floor, zero difference.
        assert g_fast[0].abs().max() < 1e-12 and g_fast[1].abs().max() < 1e-12


def test_fast_per_weight_matches_reference_with_random_ties():
    # Duplicated values tie a third sample's distances to both copies; the nearest-neighbour function is
    # then not differentiable with respect to the copies separately. The reference (autograd of amin)
    # splits the gradient evenly between the copies, the fast path gives it to one of them; both are valid
    # subgradients, and the gradient summed over every group of tied copies (moving the copies together,
    # where the function is differentiable) must agree, as must every untied entry and the value.
    g = torch.Generator().manual_seed(11)
    n, m, dim = 6, 5, 17
    q = torch.randn(n, dim, generator=g, dtype=F64)
    p = torch.randn(m, dim, generator=g, dtype=F64)
    q[1] = q[0]                 # two identical posterior samples (every weight tied)
    q[3, :5] = q[2, :5]         # ties in some weights only
    q[4, 6:9] = q[5, 6:9]
    q[2, 10:] = q[4, 10:]
    q[5, 12:] = q[4, 12:]       # a triple tie in weights 12..16 (q2, q4, q5)
    p[0, :3] = q[4, :3]         # posterior sample coincides with a prior sample
    p[2, 7] = q[1, 7]
    for chunk in (1 << 22, 3):
        v_fast, g_fast = _grad(lambda a, b, c=chunk: nn_kl_per_weight(a, b, chunk_size=c), q, p)
        v_ref, g_ref = _grad(nn_kl_per_weight_reference, q, p)
        assert torch.isfinite(v_fast) and torch.isfinite(g_fast).all()
        torch.testing.assert_close(v_fast, v_ref, rtol=1e-12, atol=1e-10)
        groups = 0
        for k in range(dim):
            for value in q[:, k].unique():
                rows = (q[:, k] == value).nonzero().flatten()
                groups += len(rows) > 1
                torch.testing.assert_close(g_fast[rows, k].sum(), g_ref[rows, k].sum(), rtol=1e-10, atol=1e-12)
        assert groups == dim + 5 + 3 + 7  # q0 == q1 everywhere, plus the partial ties above
        assert not torch.allclose(g_fast, torch.zeros_like(g_fast))


def test_fast_per_weight_float32_close_to_float64_reference():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(5, 300, generator=g, dtype=F64)
    p = torch.randn(5, 300, generator=g, dtype=F64)
    v32, g32 = _grad(lambda a, b: nn_kl_per_weight(a, b, chunk_size=64), q.float(), p.float())
    v64, g64 = _grad(nn_kl_per_weight_reference, q, p)
    assert v32.dtype == torch.float32 and g32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v64, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-3)


def test_fast_per_weight_gives_no_gradient_to_prior_samples():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(4, 6, generator=g, dtype=F64, requires_grad=True)
    p = torch.randn(4, 6, generator=g, dtype=F64, requires_grad=True)
    nn_kl_per_weight(q, p).backward()
    assert q.grad is not None and p.grad is None


@pytest.mark.parametrize("chunk", [1 << 22, 2])
def test_gradcheck_per_weight(chunk):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(4, 5, generator=g, dtype=F64, requires_grad=True)
    p = torch.randn(5, 5, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(lambda a: nn_kl_per_weight(a, p, chunk_size=chunk), (q,), eps=1e-6, atol=1e-6)


def test_gradcheck_full():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    p = torch.randn(5, 3, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(lambda a: nn_kl_full(a, p), (q,), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------- guards
@pytest.mark.parametrize("fn", [nn_kl_per_weight, nn_kl_per_weight_reference, nn_kl_full],
                         ids=["per-weight", "reference", "full"])
def test_identical_posterior_samples_give_finite_large_value(fn):
    # A collapsed posterior (all n samples equal): nu = 0 without the guard, log(rho / nu) = inf.
    q = torch.full((5, 8), 0.3, dtype=F64, requires_grad=True)
    p = torch.randn(5, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    value = fn(q, p)
    assert torch.isfinite(value)
    # nu is floored at sqrt(DISTANCE_EPS) = 1e-4, rho is ~0.1-1: each log-ratio is ~5-9 nats.
    assert math.sqrt(DISTANCE_EPS) == pytest.approx(1e-4)
    assert value.item() > 10
    value.backward()
    assert torch.isfinite(q.grad).all()


def test_identical_posterior_samples_float32_finite():
    q = torch.zeros(5, 100, requires_grad=True)
    p = torch.randn(5, 100, generator=torch.Generator().manual_seed(0))
    for value in (nn_kl_per_weight(q, p), nn_kl_full(q, p)):
        assert torch.isfinite(value)
        (g,) = torch.autograd.grad(value, q)
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("fn", [nn_kl_per_weight, nn_kl_per_weight_reference, nn_kl_full],
                         ids=["per-weight", "reference", "full"])
@pytest.mark.parametrize("q_shape, p_shape", [
    ((5,), (5, 3)),          # 1-d posterior samples
    ((5, 3), (5,)),          # 1-d prior samples
    ((5, 3), (5, 4)),        # different D
    ((5, 3, 2), (5, 3, 2)),  # not flattened
])
def test_bad_shapes_raise_helpful_error(fn, q_shape, p_shape):
    with pytest.raises(ValueError, match=r"\[n, D\].*\[m, D\]") as info:
        fn(torch.randn(q_shape), torch.randn(p_shape))
    assert str(tuple(q_shape)) in str(info.value) and str(tuple(p_shape)) in str(info.value)


@pytest.mark.parametrize("fn", [nn_kl_per_weight, nn_kl_per_weight_reference, nn_kl_full],
                         ids=["per-weight", "reference", "full"])
def test_too_few_samples_raise(fn):
    with pytest.raises(ValueError, match="at least 2 posterior samples, got 1"):
        fn(torch.randn(1, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match="at least 2 posterior samples, got 0"):
        fn(torch.randn(0, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match="at least 1 prior sample"):
        fn(torch.randn(3, 4), torch.randn(0, 4))


def test_flatten_samples():
    samples = {"a.weight": torch.arange(12.0).reshape(2, 2, 3), "a.bias": torch.tensor([[1.0], [2.0]])}
    flat = flatten_samples(samples)
    assert flat.shape == (2, 7)
    torch.testing.assert_close(flat[1], torch.tensor([6.0, 7, 8, 9, 10, 11, 2]))
    with pytest.raises(ValueError, match="no weight samples"):
        flatten_samples({})


# ----------------------------------------------------------------------------------------- module / factory
class _RecordingPrior:
    """A prior that returns fixed samples and records how it was asked."""

    def __init__(self, table: Tensor) -> None:
        self.table = table
        self.calls: list[tuple] = []

    def sample(self, shape, *, device=None, dtype=None):
        self.calls.append((tuple(shape), device, dtype))
        return self.table[: shape[0], : shape[1]].to(dtype=dtype)


def _samples(n: int = 5, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(n, 3, 4, generator=g, dtype=F64, requires_grad=True),
            "b": torch.randn(n, 4, generator=g, dtype=F64, requires_grad=True)}


def test_nearest_neighbour_kl_draws_fresh_prior_samples():
    torch.manual_seed(0)
    est = NearestNeighbourKL()
    samples = _samples()
    prior = NormalPrior(1.0)
    a, b = est(samples, prior), est(samples, prior)
    assert torch.isfinite(a) and torch.isfinite(b)
    assert a.item() != b.item()  # new prior draw each call
    # ... and the draws follow the global RNG: reseeding reproduces the value.
    torch.manual_seed(123)
    c = est(samples, prior)
    torch.manual_seed(123)
    d = est(samples, prior)
    assert c.item() == d.item()


@pytest.mark.parametrize("full", [False, True])
def test_nearest_neighbour_kl_respects_full_and_num_prior_samples(full):
    samples = _samples()
    q = flatten_samples(samples)
    table = torch.randn(10, q.shape[1], dtype=F64, generator=torch.Generator().manual_seed(9))
    prior = _RecordingPrior(table)
    est = NearestNeighbourKL(full=full, num_prior_samples=7)
    value = est(samples, prior)
    assert prior.calls == [((7, 16), q.device, F64)]
    p = table[:7]
    expected = nn_kl_full(q, p) if full else nn_kl_per_weight(q, p)
    other = nn_kl_per_weight(q, p) if full else nn_kl_full(q, p)
    torch.testing.assert_close(value, expected)
    assert abs(value.item() - other.item()) > 1e-3  # the two estimators differ here, so `full` matters
    value.backward()  # differentiable with respect to the posterior samples
    assert samples["w"].grad is not None and samples["w"].grad.abs().sum() > 0


def test_nearest_neighbour_kl_validates():
    with pytest.raises(ValueError, match="num_prior_samples"):
        NearestNeighbourKL(num_prior_samples=0)
    assert "full=True" in repr(NearestNeighbourKL(full=True))


def test_make_kl_estimator():
    per_weight = make_kl_estimator("nn-per-weight", num_prior_samples=3)
    full = make_kl_estimator("nn-full")
    assert isinstance(per_weight, NearestNeighbourKL) and not per_weight.full
    assert per_weight.num_prior_samples == 3
    assert isinstance(full, NearestNeighbourKL) and full.full and full.num_prior_samples == 5
    custom = NearestNeighbourKL(full=True, num_prior_samples=11)
    assert make_kl_estimator(custom) is custom
    assert set(KL_ESTIMATORS) == {"nn-per-weight", "nn-full", "nn-entropy", "nn-entropy-per-weight", "semi-implicit",
                                  "stein", "adversarial"}


@pytest.mark.parametrize("bad", ["knn", "nn_full", "analytic", 3])
def test_make_kl_estimator_rejects_unknown_names(bad):
    with pytest.raises(ValueError) as info:
        make_kl_estimator(bad)
    msg = str(info.value)
    assert repr(bad) in msg
    for name in KL_ESTIMATORS:
        assert repr(name) in msg


# ----------------------------------------------------------------------------------------- trainable estimator
class _CountingDiscriminatorKL(KLEstimator):
    """A stand-in for a trainable (adversarial) estimator: its own parameter, its own update step."""

    trainable = True

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(0.25))
        self.updates = 0
        self.seen: list[dict[str, Tensor]] = []

    def forward(self, samples, prior):
        q = flatten_samples(samples)
        # Differentiable in both the samples and the estimator's own parameter.
        return self.log_scale.exp() * (q**2).mean(0).sum()

    def update(self, samples, prior):
        self.updates += 1
        self.seen.append(samples)
        return {"disc_loss": float(self.updates)}


def _tiny_bbh(kl: KLEstimator):
    torch.manual_seed(0)
    model = bbh.models.MLP(2, 3, hidden=(8,))
    return bbh.create("bbh", model, kl=kl, hidden=(8, 8))


def test_trainable_estimator_plugs_into_bbh():
    est = _CountingDiscriminatorKL()
    method = _tiny_bbh(est)
    assert method.kl_estimator is est
    trainable = {id(p) for p in method.trainable_parameters()}
    assert id(est.log_scale) not in trainable
    # ... while the hypernet's parameters are all there (and the main net's generated ones are not).
    assert {id(p) for p in method.posterior.parameters()} <= trainable
    assert not any(id(p) in trainable for p in method.model.parameters())
    # The estimator's parameter is still a parameter of the module (saved with state_dict).
    assert any(k.endswith("log_scale") for k in method.state_dict())


def test_trainer_calls_update_once_per_step_and_never_steps_estimator_params():
    est = _CountingDiscriminatorKL()
    method = _tiny_bbh(est)
    torch.manual_seed(1)
    x, y = torch.randn(12, 2), torch.randint(0, 3, (12,))
    trainer = bbh.Trainer(method, steps=4, device="cpu", progress=False, seed=0)
    opt_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(est.log_scale) not in opt_params
    before_hyper = [p.detach().clone() for p in method.posterior.parameters()]
    history = trainer.fit((x, y))

    assert trainer.step == 4
    assert est.updates == 4  # once per optimizer step
    # update receives the step's S detached samples {name: [S, *shape]}
    assert len(est.seen) == 4
    for samples in est.seen:
        assert set(samples) == set(method.param_names)
        assert all(not t.requires_grad and t.shape[0] == method.draws_per_step for t in samples.values())
    # The estimator's parameter received gradients from the loss but the main optimizer did not move it.
    assert est.log_scale.grad is not None and est.log_scale.grad.abs() > 0
    assert est.log_scale.item() == 0.25
    # The main optimizer did move the hypernet.
    assert any(not torch.equal(a, b) for a, b in zip(before_hyper, method.posterior.parameters()))
    # Values returned by update() are logged (full-batch data: one step, one history record per epoch).
    assert [h["disc_loss"] for h in history] == [1.0, 2.0, 3.0, 4.0]


def test_non_trainable_estimator_is_never_updated():
    class _Spy(NearestNeighbourKL):
        def update(self, samples, prior):  # pragma: no cover - must not run
            raise AssertionError("update called on a non-trainable estimator")

    method = _tiny_bbh(_Spy())
    x, y = torch.randn(6, 2), torch.randint(0, 3, (6,))
    bbh.Trainer(method, steps=2, device="cpu", progress=False, seed=0).fit((x, y))


def test_compiled_per_weight_estimator_matches_eager():
    """The torch.compile path (used automatically for large posteriors) gives the same value and gradient."""
    from bbh.kl import nn_kl_per_weight

    q = torch.randn(5, 3000, dtype=torch.float64, requires_grad=True)
    p = torch.randn(5, 3000, dtype=torch.float64)
    eager = nn_kl_per_weight(q, p, compile=False)
    (g_eager,) = torch.autograd.grad(eager, q)
    compiled = nn_kl_per_weight(q, p, compile=True)
    (g_compiled,) = torch.autograd.grad(compiled, q)
    assert torch.allclose(eager, compiled, rtol=1e-10)
    assert torch.allclose(g_eager, g_compiled, rtol=1e-8, atol=1e-10)


def test_compiled_estimator_falls_back_to_eager_with_a_warning(monkeypatch):
    """Where torch.compile cannot run (no C++ compiler), the estimator warns once and computes eagerly."""
    import bbh.kl.nearest as kl_module

    def broken(q, p):
        raise RuntimeError("no compiler")

    monkeypatch.setitem(kl_module._compiled, "fn", broken)
    q = torch.randn(5, 100, dtype=torch.float64)
    p = torch.randn(5, 100, dtype=torch.float64)
    with pytest.warns(UserWarning, match="falling back to eager"):
        value = kl_module.nn_kl_per_weight(q, p, compile=True)
    assert torch.allclose(value, kl_module.nn_kl_per_weight(q, p, compile=False))
    assert kl_module._compiled["fn"] is None


def test_adversarial_kl_options_reach_the_estimator_and_others_refuse_them() -> None:
    """``kl_options`` (a config table) set AVB's discriminator schedule; a typo or another estimator is refused."""
    from bbh.kl.adversarial import AdversarialKL

    est = make_kl_estimator("adversarial", options={"pretrain_steps": 3, "max_weights": 50})
    assert isinstance(est, AdversarialKL) and est.pretrain_steps == 3 and est.max_weights == 50
    with pytest.raises(ValueError, match="bad kl options.*pretrain"):
        make_kl_estimator("adversarial", options={"pretrain": 3})
    with pytest.raises(ValueError, match="apply to kl='adversarial' only"):
        make_kl_estimator("nn-full", options={"pretrain_steps": 3})
    model = nn.Sequential(nn.Linear(2, 3))
    bbb = bbh.create("bbb", model, kl="adversarial", kl_options={"pretrain_steps": 0})
    assert bbb.kl_estimator.pretrain_steps == 0
    with pytest.raises(ValueError, match="apply to kl='adversarial' only"):
        bbh.create("bbb", nn.Sequential(nn.Linear(2, 3)), kl_options={"pretrain_steps": 0})
