"""Hamiltonian Monte Carlo (bbh.reference.hmc): correctness on Gaussians with known answers, determinism, the module
posterior, and the cached toy reference.

Tolerances are Monte Carlo ones: an estimate from a chain with effective sample size ESS has standard error
sd / sqrt(ESS) for a mean and about sd / sqrt(2 ESS) for a standard deviation (Gaussian target). We estimate
ESS from the chain itself and allow 4 standard errors (a false failure about once in 16,000 per check, and
the chains are seeded, so a test either always passes or always fails).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import bbh.reference.hmc as hmc_mod
from bbh.core.functional import forward_samples
from bbh.core.likelihoods import Gaussian
from bbh.experiments.toy_reference import check_step_sizes, toy_hmc
from bbh.models import MLP
from bbh.reference.hmc import HMCResult, effective_sample_size, hmc, posterior_hmc, sample_posterior

MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)  # eigenvalues 1.8 and 0.2
PREC = torch.linalg.inv(COV)


def gauss_log_prob(theta: torch.Tensor) -> torch.Tensor:
    d = theta - MEAN
    return -0.5 * d @ PREC @ d


def run_gauss(seed: int = 0, **kw) -> HMCResult:
    args = dict(step_size=0.25, num_leapfrog=8, num_samples=2000, burn_in=200, thin=1, seed=seed)
    args.update(kw)
    return hmc(gauss_log_prob, torch.zeros(2, dtype=torch.float64), **args)


# tiny toy settings: the full run (6,000 iterations x 5 leapfrog steps) takes ~15-20 s; these well under 1 s
TINY = dict(burn_in=30, num_samples=20, thin=2, num_leapfrog=3)


def test_correlated_gaussian_mean_and_covariance() -> None:
    res = run_gauss()
    s = res.samples
    assert s.shape == (2000, 2) and s.dtype == torch.float64
    ess = effective_sample_size(s)
    assert bool((ess > 300).all()), ess  # HMC on a 2-d Gaussian mixes fast; guards the tolerances below
    sd = COV.diagonal().sqrt()
    assert torch.all((s.mean(0) - MEAN).abs() < 4 * sd / ess.sqrt()), (s.mean(0), ess)
    emp_cov = torch.cov(s.T)
    # var of an empirical covariance entry (Gaussian): (S_ij^2 + S_ii S_jj) / n, with n the ESS of the
    # products z_i z_j (HMC is antithetic for the mean -- ESS > n -- but not for second moments)
    z = s - s.mean(0)
    ess2 = effective_sample_size(z[:, :, None] * z[:, None, :])
    assert bool((ess2 > 300).all()), ess2
    se_cov = ((COV**2 + torch.outer(COV.diagonal(), COV.diagonal())) / ess2).sqrt()
    assert torch.all((emp_cov - COV).abs() < 4 * se_cov), (emp_cov, se_cov)
    assert 0.6 < res.acceptance < 1.0
    assert res.divergences == 0
    assert res.step_size == 0.25


def test_same_seed_identical_other_seed_different() -> None:
    a = run_gauss(seed=3, num_samples=200, burn_in=20)
    b = run_gauss(seed=3, num_samples=200, burn_in=20)
    c = run_gauss(seed=4, num_samples=200, burn_in=20)
    assert torch.equal(a.samples, b.samples) and a.acceptance == b.acceptance
    assert not torch.equal(a.samples, c.samples)


def test_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_gauss(num_samples=10, burn_in=5)
    assert torch.equal(torch.rand(3), expected)


def test_thinning_and_burn_in_bookkeeping() -> None:
    full = run_gauss(seed=1, num_samples=100, burn_in=10, thin=1)
    thinned = run_gauss(seed=1, num_samples=100, burn_in=10, thin=10)
    assert thinned.samples.shape == (10, 2)
    assert torch.equal(thinned.samples, full.samples[9::10])  # same chain, every 10th state kept
    assert thinned.log_probs.shape == (10,)
    torch.testing.assert_close(thinned.log_probs, torch.stack([gauss_log_prob(t) for t in thinned.samples]))


def test_step_size_too_large_is_rejected_not_crashing() -> None:
    res = run_gauss(step_size=5.0, num_samples=50, burn_in=0)
    assert res.acceptance < 0.2  # unstable leapfrog: energy error explodes, proposals rejected
    assert torch.isfinite(res.samples).all()


def test_non_finite_log_prob_is_rejected() -> None:
    def half_line(theta: torch.Tensor) -> torch.Tensor:  # N(0, 1) truncated to theta > 0 (-inf outside)
        lp = -0.5 * (theta**2).sum()
        return torch.where(theta[0] > 0, lp, torch.full_like(lp, -math.inf))

    res = hmc(half_line, torch.ones(1, dtype=torch.float64), step_size=0.3, num_leapfrog=5, num_samples=500,
              seed=0)
    assert bool((res.samples > 0).all())
    assert res.divergences > 0
    with pytest.raises(ValueError, match="not finite at init"):
        hmc(half_line, -torch.ones(1, dtype=torch.float64), step_size=0.1, num_leapfrog=1, num_samples=1)


def test_jitter_breaks_half_period_resonance() -> None:
    # N(0, 1): a trajectory of length pi (half a period) maps theta -> -theta, so theta^2 never moves
    def std_normal(theta: torch.Tensor) -> torch.Tensor:
        return -0.5 * (theta**2).sum()

    args = dict(step_size=math.pi / 10, num_leapfrog=10, num_samples=1000, seed=0)
    x0 = torch.full((1,), 0.5, dtype=torch.float64)
    fixed = hmc(std_normal, x0, **args).samples
    jittered = hmc(std_normal, x0, jitter=0.3, **args).samples
    # fixed: |theta| barely moves (measured std 0.2-0.55, ESS of theta^2 7-14 over seeds 0-2);
    # jittered: std 0.99-1.02, ESS of theta^2 120-210
    assert float(fixed.std()) < 0.8
    ess_fixed, ess_jit = float(effective_sample_size(fixed**2)), float(effective_sample_size(jittered**2))
    assert ess_fixed < 30 and ess_jit > 80, (ess_fixed, ess_jit)
    assert abs(float(jittered.std()) - 1) < 4 / math.sqrt(2 * ess_jit)
    with pytest.raises(ValueError, match="jitter"):
        hmc(std_normal, x0, step_size=0.1, num_leapfrog=1, num_samples=1, jitter=1.0)


def test_dual_averaging_reaches_target_acceptance() -> None:
    res = run_gauss(step_size=2.0, num_samples=1000, burn_in=500, adapt_step_size=True, target_accept=0.8)
    assert res.step_size != 2.0
    # the post-burn-in acceptance of the adapted (then frozen) step size is near the target
    assert 0.65 < res.acceptance < 0.95, (res.acceptance, res.step_size)


def test_invalid_arguments() -> None:
    x0 = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError):
        hmc(gauss_log_prob, x0, step_size=0.0, num_leapfrog=5, num_samples=10)
    with pytest.raises(ValueError):
        hmc(gauss_log_prob, x0, step_size=0.1, num_leapfrog=0, num_samples=10)
    with pytest.raises(ValueError):
        hmc(gauss_log_prob, x0.reshape(1, 2), step_size=0.1, num_leapfrog=5, num_samples=10)


def test_effective_sample_size() -> None:
    g = torch.Generator().manual_seed(0)
    iid = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    ess = effective_sample_size(iid)
    assert bool(((ess > 3000) & (ess < 5000)).all()), ess
    # AR(1) with phi = 0.9: ESS = n (1 - phi) / (1 + phi) ~ n / 19
    e = torch.randn(20000, generator=g, dtype=torch.float64)
    ar = torch.empty_like(e)
    ar[0] = e[0]
    for t in range(1, len(e)):
        ar[t] = 0.9 * ar[t - 1] + math.sqrt(1 - 0.81) * e[t]
    assert 20000 / 19 * 0.7 < float(effective_sample_size(ar)) < 20000 / 19 * 1.3


def test_bayesian_linear_regression_matches_analytic_posterior() -> None:
    g = torch.Generator().manual_seed(0)
    n, d, sigma, prior_scale = 30, 3, 0.5, 1.0
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_true = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
    y = (x @ w_true + 0.2 + sigma * torch.randn(n, generator=g, dtype=torch.float64)).unsqueeze(1)
    # theta = (w, b); design [x, 1]; posterior N(mu, Sigma), Sigma = (Phi^T Phi / s^2 + I / p^2)^-1
    phi = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    cov = torch.linalg.inv(phi.T @ phi / sigma**2 + torch.eye(d + 1, dtype=torch.float64) / prior_scale**2)
    mean = cov @ phi.T @ y.squeeze(1) / sigma**2
    sd = cov.diagonal().sqrt()

    model = nn.Linear(d, 1).double()
    samples, res = posterior_hmc(model, x, y, Gaussian(sigma), prior_scale, step_size=0.05, num_leapfrog=5,
                                 num_samples=1500, burn_in=200, seed=0, adapt_step_size=True, jitter=0.3)
    theta = torch.cat([samples["weight"].reshape(-1, d), samples["bias"].reshape(-1, 1)], dim=1)
    assert theta.shape == (1500, d + 1)
    ess = effective_sample_size(theta)
    assert bool((ess > 200).all()), ess
    assert torch.all((theta.mean(0) - mean).abs() < 4 * sd / ess.sqrt()), (theta.mean(0), mean, ess)
    # relative s.e. of a sample sd is 1 / sqrt(2 n), n the ESS of the squared deviations (not of theta itself:
    # HMC's antithetic draws give ESS > n for means but not for second moments)
    ess2 = effective_sample_size((theta - theta.mean(0)) ** 2)
    rel_sd = theta.std(0) / sd - 1
    assert torch.all(rel_sd.abs() < 4 / (2 * ess2).sqrt()), (theta.std(0), sd, ess2)
    assert 0.6 < res.acceptance < 0.97


def test_sample_posterior_layout_and_forward_samples() -> None:
    torch.manual_seed(0)
    model = MLP(2, 1, hidden=(5,))  # float32 model: samples come back in float32
    x = torch.randn(8, 2)
    y = torch.randn(8, 1)
    samples = sample_posterior(model, x, y, Gaussian(1.0), step_size=0.02, num_leapfrog=3, num_samples=10,
                               burn_in=5, thin=2, seed=0)
    params = dict(model.named_parameters())
    assert set(samples) == set(params)
    for name, p in params.items():
        assert samples[name].shape == (5, *p.shape)
        assert samples[name].dtype == p.dtype
    out = forward_samples(model, samples, x)
    assert out.shape == (5, 8, 1) and torch.isfinite(out).all()
    # the chain starts at the model's parameters and does not modify the model
    torch.testing.assert_close(dict(model.named_parameters())["net.0.weight"], params["net.0.weight"])


def test_module_log_prob_is_likelihood_plus_prior() -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 1).double()
    x, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    log_prob, init, unflatten = hmc_mod.module_log_prob(model, x, y, Gaussian(0.7), prior_scale=2.0)
    expected = Gaussian(0.7).log_prob(model(x), y).sum() + sum(
        torch.distributions.Normal(0.0, 2.0).log_prob(p).sum() for p in model.parameters())
    torch.testing.assert_close(log_prob(init), expected.detach())
    assert unflatten(torch.stack([init, init]))["weight"].shape == (2, 1, 2)


# --- the toy reference (paper Fig. 1) ----------------------------------------------------------------------


def test_short_toy_run_is_more_uncertain_away_from_the_data(tmp_path) -> None:
    # a shortened chain (1,000 iterations instead of 6,000): enough for the qualitative Fig. 1 picture
    r = toy_hmc(0, tmp_path, burn_in=500, num_samples=500, thin=5)
    s = r["summary"]
    assert r["cached"] is False and len(r["mean"]) == len(r["std"]) == len(r["grid"]) == 500
    assert len(r["samples"]) == 100 and len(r["samples"][0]) == 500
    assert 0.5 < s["acceptance"] <= 1.0
    assert s["std_outside"] > 1.5 * s["std_inside"] > 0, s
    assert s["rmse"] < 120, s  # x^3 reaches 216 at the grid edge; the fit follows the data inside [-4, 4]


def test_toy_cache_is_read_back_without_sampling(tmp_path, monkeypatch) -> None:
    first = toy_hmc(0, tmp_path, **TINY)
    files = list(tmp_path.glob("toy_hmc-*.json"))
    assert len(files) == 1 and first["cached"] is False

    def boom(*args, **kwargs):
        raise AssertionError("the sampler ran although the result is cached")

    monkeypatch.setattr(hmc_mod, "hmc", boom)
    second = toy_hmc(0, tmp_path, **TINY)
    assert second["cached"] is True
    assert second["summary"] == first["summary"] and second["mean"] == first["mean"]
    with pytest.raises(AssertionError, match="sampler ran"):  # other settings or seed: a different key
        toy_hmc(1, tmp_path, **TINY)


@pytest.mark.parametrize("content", ["", "{not json", '{"key": "x"}', "[1, 2]", "truncated"])
def test_toy_corrupt_cache_is_recomputed(tmp_path, content) -> None:
    first = toy_hmc(0, tmp_path, **TINY)
    (path,) = tmp_path.glob("toy_hmc-*.json")
    if content == "truncated":
        content = path.read_text()[: len(path.read_text()) // 2]
    path.write_text(content)
    again = toy_hmc(0, tmp_path, **TINY)
    assert again["cached"] is False
    assert again["summary"]["std_inside"] == first["summary"]["std_inside"]  # deterministic given the seed
    assert json.loads(path.read_text())["key"] == first["key"]  # rewritten, valid again
    assert toy_hmc(0, tmp_path, **TINY)["cached"] is True


def test_toy_cache_dir_from_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BBH_CACHE_DIR", str(tmp_path / "env"))
    toy_hmc(0, **TINY)
    assert len(list((tmp_path / "env").glob("toy_hmc-*.json"))) == 1
    with pytest.raises(TypeError, match="unknown toy_hmc setting"):
        toy_hmc(0, tmp_path, leapfrog=3)


def test_check_step_sizes_runs_both_and_compares(tmp_path) -> None:
    out = check_step_sizes(0, tmp_path, **TINY)
    assert out["half"]["step_size"] == pytest.approx(0.5 * out["full"]["step_size"])
    assert out["half"]["num_leapfrog"] == 2 * out["full"]["num_leapfrog"]  # same trajectory length
    assert set(out["relative_difference"]) == {"std_inside", "std_outside", "rmse"}
    assert isinstance(out["agree"], bool)
    assert len(list(tmp_path.glob("toy_hmc-*.json"))) == 2
