"""The posterior-fidelity instruments (bbh.reference.known, bbh.evaluation.fidelity) against closed forms, and the
collapse cases they exposed, held so that they cannot come back: a direction that shrinks must be pushed back by the
KL estimate, in every direction and inside every mixture component."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bbh
from bbh.evaluation.fidelity import (
    direction_std_ratios,
    entropy_gradient_per_scale,
    estimator_error,
    fit_to_target,
    gaussian_fit_kl,
    percentiles,
)
from bbh.kl import GaussianLayer, make_kl_estimator, semi_implicit_entropy
from bbh.posteriors.hypernet import HypernetPosterior
from bbh.posteriors.semi_implicit import SemiImplicitPosterior
from bbh.reference.known import GaussianTarget, gaussian_target, linear_regression_posterior, linear_regression_problem

F64 = torch.float64
TWO_SCALES = torch.cat([torch.ones(25), torch.full((25,), 0.05)]).double()   # 25 wide, 25 narrow directions


# ---------------------------------------------------------------------------------------------- known posteriors
def test_linear_regression_posterior_is_the_least_squares_solution_of_the_augmented_system():
    # w ~ N(0, s^2), y = Xw + N(0, σ^2): the posterior mean solves [X/σ; I/s] w = [y/σ; 0] in least squares, and
    # the precision is the augmented system's Gram matrix. Both computed here independently of the module.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, generator=g, dtype=F64), torch.randn(30, generator=g, dtype=F64)
    noise, s = 0.7, 2.0
    post = linear_regression_posterior(x, y, noise, s)
    a = torch.cat([x / noise, torch.eye(4, dtype=F64) / s])
    b = torch.cat([y / noise, torch.zeros(4, dtype=F64)])
    assert torch.allclose(post.mean, torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1), atol=1e-10)
    assert torch.allclose(post.precision, a.T @ a, atol=1e-8)


def test_gaussian_target_density_entropy_and_kl_agree_with_torch_distributions():
    target = gaussian_target(6, "correlated", seed=3)
    mvn = torch.distributions.MultivariateNormal(target.mean, target.cov)
    w = target.sample((7, 6), dtype=F64)
    assert torch.allclose(target.log_prob(w), mvn.log_prob(w), atol=1e-9)
    assert target.entropy() == pytest.approx(float(mvn.entropy()), abs=1e-9)
    other_cov = torch.diag(torch.linspace(0.5, 2.0, 6, dtype=F64))
    other_mean = torch.linspace(-1, 1, 6, dtype=F64)
    expected = torch.distributions.kl_divergence(torch.distributions.MultivariateNormal(other_mean, other_cov), mvn)
    assert target.kl_from_gaussian(other_mean, other_cov) == pytest.approx(float(expected), abs=1e-8)


def test_targets_spread_their_scales_over_two_decades_and_the_correlated_one_is_rotated():
    aniso, corr = gaussian_target(40, "anisotropic"), gaussian_target(40, "correlated")
    assert float(aniso.stds.max() / aniso.stds.min()) == pytest.approx(100.0, rel=1e-6)
    assert torch.allclose(aniso.stds, corr.stds)
    off = corr.cov - torch.diag(corr.cov.diagonal())
    assert float(off.abs().max()) > 0.1 * float(corr.cov.diagonal().max())
    assert torch.equal(gaussian_target(5, "isotropic").cov, torch.eye(5, dtype=F64))
    with pytest.raises(ValueError, match="unknown target kind"):
        gaussian_target(5, "banana")


def test_the_regression_problem_has_a_correlated_anisotropic_posterior():
    problem = linear_regression_problem(30, 60)
    stds = problem.posterior.stds
    assert float(stds.max() / stds.min()) > 10
    assert problem.x.shape == (60, 30) and problem.y.shape == (60, 1)


# ---------------------------------------------------------------------------------------------- the instruments
def test_direction_std_ratios_are_one_for_exact_draws_and_scale_with_the_draws():
    target = gaussian_target(20, "correlated")
    draws = target.sample((20000, 20), dtype=F64)
    p5, p50, p95 = percentiles(direction_std_ratios(draws, target))
    assert 0.97 < p5 and p95 < 1.03            # sd of a std estimate at 20,000 draws: 0.5 %
    assert percentiles(direction_std_ratios(3 * draws, target))[1] == pytest.approx(3.0, rel=0.03)
    assert gaussian_fit_kl(draws, target) < 0.02
    assert gaussian_fit_kl(3 * draws, target) > 10
    assert math.isnan(gaussian_fit_kl(draws[:20], target))


def test_per_weight_and_semi_implicit_entropies_push_every_direction_and_the_full_vector_one_does_not():
    # Exact: dH/dlog s = 1 in every direction. Measured (n = 20, 8 repeats): per-weight 1.000 / 1.000,
    # semi-implicit 1.000 / 1.000, full-vector KL entropy 1.99 (wide) and 0.006 (narrow).
    for name in ("nn-entropy-per-weight", "semi-implicit"):
        g = entropy_gradient_per_scale(make_kl_estimator(name), TWO_SCALES, 20)
        assert float(g[:25].mean()) == pytest.approx(1.0, abs=0.05), name
        assert float(g[25:].mean()) == pytest.approx(1.0, abs=0.05), name
    g = entropy_gradient_per_scale(make_kl_estimator("nn-entropy"), TWO_SCALES, 20)
    assert float(g[25:].mean()) < 0.05 < 1.5 < float(g[:25].mean())


def test_the_semi_implicit_entropy_is_exact_for_a_gaussian_and_a_lower_bound_for_a_mixture():
    torch.manual_seed(0)
    d, s = 30, torch.linspace(0.1, 2.0, 30, dtype=F64)
    exact = 0.5 * d * math.log(2 * math.pi * math.e) + float(s.log().sum())
    # constant means: every term is the Gaussian's own density, so the estimate is exact up to the Monte Carlo of ε
    means = torch.zeros(40, d, dtype=F64)
    values = [float(semi_implicit_entropy(means + s * torch.randn(40, d, dtype=F64), means, s)) for _ in range(20)]
    assert sum(values) / 20 == pytest.approx(exact, abs=0.3)   # sd of one value ~ sqrt(d / 2 / 40) = 0.6
    # means drawn from N(0, a^2): q = N(0, a^2 + s^2); the bound is below H[q] and rises with n
    a = 1.0
    truth = 0.5 * d * math.log(2 * math.pi * math.e) + 0.5 * float((a**2 + s**2).log().sum())

    def bound(n: int) -> float:
        vals = []
        for _ in range(10):
            mu = a * torch.randn(n, d, dtype=F64)
            vals.append(float(semi_implicit_entropy(mu + s * torch.randn(n, d, dtype=F64), mu, s)))
        return sum(vals) / len(vals)

    b5, b200 = bound(5), bound(200)
    assert b5 < b200 < truth
    assert b200 - exact <= math.log(200) + 0.5   # the implicit part is credited at most log n nats


def test_estimator_error_measures_a_known_bias():
    # the per-weight entropy KL is nearly unbiased on a factorised Gaussian (measured +3.4 nats at d = 50, n = 20,
    # against a truth of 62.4); the full-vector one is far below (measured -69)
    per_weight = estimator_error(make_kl_estimator("nn-entropy-per-weight"), TWO_SCALES, 20, repeats=4)
    full = estimator_error(make_kl_estimator("nn-entropy"), TWO_SCALES, 20, repeats=4)
    assert per_weight.truth == pytest.approx(float((0.5 * TWO_SCALES**2 - TWO_SCALES.log() - 0.5).sum()))
    assert abs(per_weight.bias) < 8 and full.bias < -40


def test_a_semi_implicit_hypernet_fits_an_anisotropic_gaussian_in_every_direction():
    # Measured (d = 100, 3,000 steps, lr 1e-2): 0.98 / 1.00 / 1.02; here d = 20 in 1,500 steps (0.89 / 1.00 / 1.02:
    # the scales travel from 0.01 to 10 in log space at ~lr a step, so 600 steps leave the wide ones short).
    torch.manual_seed(0)
    target = gaussian_target(20, "anisotropic")
    start = {"w": torch.randn(20) * 0.1}
    post = SemiImplicitPosterior(HypernetPosterior({"w": torch.Size([20])}, start, noise_dim=4, hidden=(32, 32)),
                                 start)
    fit_to_target(post, make_kl_estimator("semi-implicit"), target, steps=1500, draws_per_step=10, lr=1e-2)
    with torch.no_grad():
        draws = post.sample(4000)["w"]
    p5, _, p95 = percentiles(direction_std_ratios(draws, target))
    assert 0.8 < p5 and p95 < 1.25


# ---------------------------------------------------------------------------------------------- BbH integration
def test_bbh_semi_implicit_option_builds_a_gaussian_layer_and_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    method = bbh.create("bbh", model, likelihood=bbh.likelihoods.Gaussian(0.5), kl="semi-implicit", draws_per_step=6,
                        likelihood_samples="average")
    assert isinstance(method.posterior, SemiImplicitPosterior) and method.semi_implicit
    x = torch.randn(64, 3)
    y = x.sum(1, keepdim=True)
    opt = torch.optim.Adam(method.trainable_parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        terms = method.loss(x, y, num_data=64)
        first = first if first is not None else float(terms.total)
        opt.zero_grad()
        terms.total.backward()
        opt.step()
    assert float(terms.total) < first
    # (the state_dict round trip of the default, semi-implicit, posterior: test_hypernet's layouts round trip)


def test_semi_implicit_kl_without_the_gaussian_layer_is_refused_clearly():
    with pytest.raises(ValueError, match="semi_implicit=True"):
        bbh.create("bbh", nn.Linear(3, 1), likelihood=bbh.likelihoods.Gaussian(1.0), kl="semi-implicit",
                   semi_implicit=False)
    with pytest.raises(ValueError, match="semi-implicit posterior"):
        bbh.kl.estimate_kl(make_kl_estimator("semi-implicit"), {"w": torch.randn(4, 3)}, bbh.priors.NormalPrior())
    # any other estimator may run on the Gaussian layer's draws
    method = bbh.create("bbh", nn.Linear(3, 1), likelihood=bbh.likelihoods.Gaussian(1.0), kl="nn-entropy-per-weight",
                        semi_implicit=True)
    assert torch.isfinite(method.loss(torch.randn(8, 3), torch.randn(8, 1), num_data=8).total)


class _Spread(nn.Module):
    """Draws N(0, s^2) of the rank1 factor shapes, s settable: a controllable within-component spread."""

    def __init__(self, shapes: dict[str, torch.Size]) -> None:
        super().__init__()
        self.shapes = shapes
        self.log_s = nn.Parameter(torch.tensor(0.0))

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        return {k: self.log_s.exp() * torch.randn(n, *s) for k, s in self.shapes.items()}


@pytest.mark.parametrize("kl", ["nn-entropy", "nn-entropy-per-weight"])
def test_a_mixtures_kl_sees_each_components_own_spread(kl):
    # Before the bound on the unshifted draws, with one draw per component the estimate saw only the distances
    # between component means: shrinking every component to a point changed it little (measured: -724 at
    # s = 1e-4 where the truth is <= -10,821). Now shrinking from 0.05 to 1e-4 must cost ~F log(500) nats.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 3))
    method = bbh.create("bbh", model, layout="rank1", mixture=4, kl=kl, draws_per_step=8)
    shapes = {k: v.shape[1:] for k, v in method.posterior.factors.sample(1).items()}
    spread = _Spread(shapes)
    method.posterior.factors = spread
    f = sum(s.numel() for s in shapes.values())

    def kl_at(s: float) -> float:
        with torch.no_grad():
            spread.log_s.fill_(math.log(s))
        torch.manual_seed(1)
        return float(method._kl(method._draw(8, None)))

    assert kl_at(1e-4) - kl_at(0.05) > 0.8 * f * math.log(500)
    # and its gradient pushes the spread back out: dKL/dlog s ~ -F at a small s
    with torch.no_grad():
        spread.log_s.fill_(math.log(1e-3))
    method._kl(method._draw(8, None)).backward()
    assert float(spread.log_s.grad) < -0.8 * f


def test_the_gaussian_target_serves_as_the_prior_of_every_estimator():
    target = GaussianTarget(torch.zeros(5), torch.eye(5, dtype=F64) * 4)
    draws = {"w": torch.randn(6, 5)}
    for name in ("nn-per-weight", "nn-full", "nn-entropy", "nn-entropy-per-weight"):
        assert torch.isfinite(make_kl_estimator(name)(draws, target))
    layer = GaussianLayer({"w": torch.zeros(6, 5)}, {"w": torch.ones(5)})
    assert torch.isfinite(make_kl_estimator("semi-implicit")(draws, target, layer))


@pytest.mark.parametrize("layout", ["layerwise", "sliced", "single", "chunked"])
def test_the_default_estimator_of_every_weight_generating_layout_pushes_every_direction(layout):
    # the collapse case of the full-vector entropy (0.006 for a direction at 0.05) must not be a default again
    method = bbh.create("bbh", nn.Linear(3, 2), layout=layout, chunk_size=4, num_chunks=2)
    g = entropy_gradient_per_scale(method.kl_estimator, TWO_SCALES, 20, repeats=2)
    assert float(g[25:].mean()) > 0.9 and float(g[:25].mean()) < 1.1


def test_a_prior_that_can_only_be_sampled_keeps_the_papers_estimator():
    class SamplerOnly:
        def sample(self, shape, *, device=None, dtype=None):
            return torch.randn(shape, device=device, dtype=dtype)

    method = bbh.create("bbh", nn.Linear(3, 2), prior=SamplerOnly())
    assert not method.semi_implicit and not method.kl_estimator.full   # Eq. 2 per weight


def test_bayes_by_backprop_refuses_the_semi_implicit_bound_at_construction():
    with pytest.raises(ValueError, match="kl='analytic'"):
        bbh.create("bbb", nn.Linear(3, 2), kl="semi-implicit")


def test_ssge_recovers_a_low_dimensional_gaussian_score():
    torch.manual_seed(0)
    scales = torch.tensor([0.1, 1.0], dtype=torch.float64)
    x = torch.randn(300, 2, dtype=torch.float64) * scales
    true = -x / scales**2
    est = bbh.kl.ssge_score(x)
    cosine = float(torch.nn.functional.cosine_similarity(est.flatten(), true.flatten(), dim=0))
    gain = float((est * true).sum() / (true * true).sum())
    assert cosine > 0.9 and 0.8 < gain < 1.1


def test_stein_kl_reports_the_knn_value_and_pushes_narrow_and_wide_directions_alike_when_whitened():
    scales = torch.cat([torch.ones(25), torch.full((25,), 0.05)]).double()
    whitened = entropy_gradient_per_scale(bbh.kl.SteinKL(), scales, 20)
    raw = entropy_gradient_per_scale(bbh.kl.SteinKL(whiten=False), scales, 20)
    assert 0.7 < float(whitened[25:].mean() / whitened[:25].mean()) < 1.4
    assert float(raw[25:].mean()) < 0.05 * float(raw[:25].mean())          # an isotropic kernel cannot see them
    # n draws in D >> n dimensions: the kernel's score shrinks like n / D (docs/fidelity.md), measured here
    wide = entropy_gradient_per_scale(bbh.kl.SteinKL(), torch.ones(1000, dtype=torch.float64), 20, repeats=2)
    assert float(wide.mean()) < 0.1
    torch.manual_seed(1)
    w = {"w": torch.randn(20, 50, dtype=torch.float64) * scales}
    prior = bbh.priors.NormalPrior(1.0)
    assert torch.allclose(bbh.kl.SteinKL()(w, prior), make_kl_estimator("nn-entropy")(w, prior))


def test_bbh_trains_with_the_stein_estimator():
    torch.manual_seed(0)
    method = bbh.create("bbh", nn.Linear(3, 1), likelihood="gaussian", kl="stein", draws_per_step=8)
    opt = torch.optim.Adam(method.trainable_parameters(), lr=1e-2)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    for _ in range(3):
        loss = method.loss(x, y, num_data=32).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert not isinstance(method.hypernet, SemiImplicitPosterior)     # no Gaussian layer: the draws are implicit
