"""Tests of the entropy-based KL estimator (:mod:`bbh.kl.entropy`): the Kozachenko–Leonenko entropy of the
posterior samples and the exact cross-entropy to the prior, against analytic Gaussians.

Tolerances come from the spread measured over 16 seeds (in the comments next to them), and the accuracy
tests check that plausible broken variants (no log V_d, no ψ(n) - ψ(k), distances squared, wrong sign of
the cross-entropy) would land outside them.
"""

from __future__ import annotations

import math

import pytest
import torch

import bbh
from bbh.core.priors import NormalPrior
from bbh.kl import KL_ESTIMATORS, EntropyKL, entropy_kl, knn_entropy_full, knn_entropy_per_weight, make_kl_estimator
from bbh.kl.entropy import _log_unit_ball_volume

F64 = torch.float64

# A correlated 3-d Gaussian.
COV = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]], dtype=F64)
MEAN = torch.tensor([0.5, -1.0, 2.0], dtype=F64)


def _gaussian_entropy(cov: torch.Tensor) -> float:
    return 0.5 * torch.logdet(2 * math.pi * math.e * cov).item()


def _draw(n: int, seed: int, cov: torch.Tensor = COV, mean: torch.Tensor = MEAN) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return mean + torch.randn(n, cov.shape[0], generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T


def test_unit_ball_volume():
    assert math.exp(_log_unit_ball_volume(1)) == pytest.approx(2.0)
    assert math.exp(_log_unit_ball_volume(2)) == pytest.approx(math.pi)
    assert math.exp(_log_unit_ball_volume(3)) == pytest.approx(4 / 3 * math.pi)


@pytest.mark.parametrize("k", [1, 5])
def test_full_entropy_of_correlated_gaussian(k):
    # n = 2000 in 3-d: mean error over 16 seeds -0.03 (k = 1) / -0.04 (k = 5), sd 0.05 / 0.03; tolerance 0.15.
    truth = _gaussian_entropy(COV)
    values = torch.tensor([knn_entropy_full(_draw(2000, seed), k).item() for seed in range(3)])
    assert (values - truth).abs().max() < 0.15
    # Broken variants would be off by much more: no log V_3 (1.43), no ψ(n) - ψ(k) (>= 5.7), squared
    # distances (the d/n Σ log ε term doubled, ~ +1), per-weight marginals (+0.86: the mutual information).
    q = _draw(2000, 0)
    assert abs(_log_unit_ball_volume(3)) > 1.0
    assert math.log(2000) - math.log(k) > 1.0
    assert knn_entropy_per_weight(q, 5).item() - truth > 0.6


def test_per_weight_entropy_of_factorised_gaussian_is_sum_of_marginals():
    cov = torch.diag(torch.tensor([0.25, 1.0, 4.0], dtype=F64))
    truth = _gaussian_entropy(cov)
    # n = 2000, k = 5: error sd ~0.03 per 3 weights; k = 1 at this n is biased up by the 1e-4 distance floor.
    for seed in range(3):
        assert knn_entropy_per_weight(_draw(2000, seed, cov), 5).item() == pytest.approx(truth, abs=0.15)


def test_entropy_is_translation_invariant_and_scale_equivariant_exactly():
    # Ĥ(s q + c) = Ĥ(q) + D log s for every sample set: the estimator's gradient with respect to a common
    # scale of the samples is the exact D / s however few samples and however many dimensions.
    g = torch.Generator().manual_seed(1)
    q = torch.randn(5, 301, generator=g, dtype=F64)
    shift = torch.randn(301, generator=g, dtype=F64) * 3
    for k in (1, 4):
        base = knn_entropy_full(q, k)
        torch.testing.assert_close(knn_entropy_full(2.5 * q + shift, k), base + 301 * math.log(2.5))
        s = torch.tensor(1.3, dtype=F64, requires_grad=True)
        (grad,) = torch.autograd.grad(knn_entropy_full(s * q, k), s)
        assert grad.item() == pytest.approx(301 / 1.3, rel=1e-9)
    # Per weight, 1-d gaps can come near the 1e-4 distance floor, which breaks exactness slightly.
    base = knn_entropy_per_weight(q, 2)
    torch.testing.assert_close(knn_entropy_per_weight(0.5 * q + shift, 2), base + 301 * math.log(0.5), rtol=1e-5,
                               atol=1e-3)


def test_entropy_bias_in_high_dimension_is_a_constant():
    # 20 samples of N(0, s^2 I_301): the estimate is ~93 nats above the truth (k = 5; 83 for k = 1), the
    # same constant for every s, so it has no effect on gradients with respect to the scale.
    d = 301
    biases = []
    for scale in (0.5, 1.0, 2.0):
        truth = d * (0.5 * math.log(2 * math.pi * math.e) + math.log(scale))
        q = torch.randn(20, d, generator=torch.Generator().manual_seed(0), dtype=F64) * scale
        biases.append(knn_entropy_full(q, 5).item() - truth)
    assert biases[0] == pytest.approx(biases[1], abs=1e-8) and biases[1] == pytest.approx(biases[2], abs=1e-8)
    assert 70 < biases[0] < 115


@pytest.mark.parametrize("prior_scale", [1.0, 2.0])
def test_entropy_kl_of_correlated_gaussian(prior_scale):
    # KL(N(m, C) || N(0, s^2 I)) in closed form; n = 2000, k = 5: error +0.04, sd 0.03 over 16 seeds.
    s2 = prior_scale**2
    truth = 0.5 * (torch.trace(COV) / s2 + MEAN @ MEAN / s2 - 3 + 3 * math.log(s2) - torch.logdet(COV)).item()
    prior = NormalPrior(prior_scale)
    for seed in range(3):
        q = _draw(2000, seed)
        value = entropy_kl(q, prior, k=5).item()
        assert value == pytest.approx(truth, abs=0.15)
        # The cross-entropy is exact: the Monte Carlo average of -log p; a wrong sign would be off by 2x it.
        cross = -prior.log_prob(q).sum(1).mean().item()
        assert abs(2 * cross) > 1.0


def test_entropy_kl_zero_when_posterior_is_the_prior():
    # Low-dimensional case: KL(p || p) = 0 within the estimator's spread (sd ~0.05 at n = 2000, d = 2).
    prior = NormalPrior(1.5)
    for seed in range(3):
        q = torch.randn(2000, 2, generator=torch.Generator().manual_seed(seed), dtype=F64) * 1.5
        assert entropy_kl(q, prior, k=5).item() == pytest.approx(0.0, abs=0.15)


def test_entropy_kl_gradcheck():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(6, 4, generator=g, dtype=F64, requires_grad=True)
    prior = NormalPrior(1.0)
    for full in (True, False):
        assert torch.autograd.gradcheck(lambda a, f=full: entropy_kl(a, prior, k=2, full=f), (q,), eps=1e-6,
                                        atol=1e-6)


def test_identical_samples_give_finite_values_and_gradients():
    q = torch.zeros(6, 50, dtype=F64, requires_grad=True)
    value = entropy_kl(q, NormalPrior(1.0), k=3)
    assert torch.isfinite(value)
    (grad,) = torch.autograd.grad(value, q)
    assert torch.isfinite(grad).all()


def test_validation():
    with pytest.raises(ValueError, match="at least k \\+ 1 = 6 samples, got 5"):
        knn_entropy_full(torch.randn(5, 3), 5)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        knn_entropy_per_weight(torch.randn(5, 3), 0)
    with pytest.raises(ValueError, match=r"\[n, D\]"):
        knn_entropy_full(torch.randn(5, 3, 2), 1)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        EntropyKL(k=0)

    class SampleOnlyPrior:
        def sample(self, shape, *, device=None, dtype=None):
            return torch.randn(shape, dtype=dtype)

    with pytest.raises(TypeError, match="log_prob"):
        EntropyKL()({"w": torch.randn(4, 3)}, SampleOnlyPrior())
    with pytest.raises(ValueError, match="at least 2 posterior samples"):
        EntropyKL()({"w": torch.randn(1, 3)}, NormalPrior(1.0))


def test_module_caps_k_at_n_minus_1_and_flattens():
    g = torch.Generator().manual_seed(4)
    samples = {"w": torch.randn(5, 3, 4, generator=g, dtype=F64), "b": torch.randn(5, 4, generator=g, dtype=F64)}
    q = torch.cat([samples["w"].reshape(5, -1), samples["b"]], dim=1)
    prior = NormalPrior(1.0)
    est = EntropyKL(k=5)
    torch.testing.assert_close(est(samples, prior), entropy_kl(q, prior, k=4))
    torch.testing.assert_close(EntropyKL(full=False, k=2)(samples, prior), entropy_kl(q, prior, k=2, full=False))
    assert repr(est) == "EntropyKL(full=True, k=5)"


def test_factory_names():
    assert {"nn-entropy", "nn-entropy-per-weight"} <= set(KL_ESTIMATORS)
    full, per_weight = make_kl_estimator("nn-entropy"), make_kl_estimator("nn-entropy-per-weight")
    assert isinstance(full, EntropyKL) and full.full and full.k == 5
    assert isinstance(per_weight, EntropyKL) and not per_weight.full and per_weight.k == 5


def test_bbh_trains_with_the_entropy_estimator():
    torch.manual_seed(0)
    method = bbh.create("bbh", bbh.models.MLP(2, 1, hidden=(8,)), likelihood=bbh.likelihoods.Gaussian(1.0),
                        kl="nn-entropy", hidden=(8, 8), draws_per_step=6, likelihood_samples="average")
    x, y = torch.randn(16, 2), torch.randn(16, 1)
    history = bbh.Trainer(method, steps=5, lr=1e-3, device="cpu", progress=False, seed=0).fit((x, y))
    assert all(math.isfinite(h["kl"]) for h in history)
