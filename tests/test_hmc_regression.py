"""HMC reference for UCI regression (bbh.reference.hmc_regression): the R-hat / ESS diagnostics on synthetic draws
with known answers, the log posterior against torch.distributions, and small end-to-end runs (shapes, recovery of
a known function and noise level, determinism, input validation). The sampler itself is tested in test_hmc.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from bbh.core.functional import forward_samples
from bbh.core.predictive import RegressionPredictive
from bbh.models import MLP
from bbh.reference.hmc_regression import bulk_ess, hmc_regression, log_posterior, split_rhat


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------------
# diagnostics on synthetic draws


def test_rhat_near_one_for_independent_chains() -> None:
    draws = torch.randn(4, 1000, 3, generator=gen(0), dtype=torch.float64)
    for rank in (True, False):
        r = split_rhat(draws, rank_normalised=rank)
        assert r.shape == (3,)
        assert bool((r < 1.01).all()), r


def test_rhat_flags_chains_stuck_at_different_values() -> None:
    draws = torch.randn(4, 500, generator=gen(1), dtype=torch.float64)
    draws = draws + torch.tensor([0.0, 0.0, 0.0, 1.5], dtype=torch.float64)[:, None]  # one chain elsewhere
    assert float(split_rhat(draws)) > 1.1
    assert float(split_rhat(draws, rank_normalised=False)) > 1.1
    # a single drifting chain: splitting it into halves exposes the trend
    drift = torch.randn(1, 1000, generator=gen(2), dtype=torch.float64) + torch.linspace(0, 3, 1000)
    assert float(split_rhat(drift)) > 1.1


def test_rank_normalised_folded_rhat_flags_different_scales() -> None:
    draws = torch.randn(2, 1000, generator=gen(3), dtype=torch.float64) * torch.tensor([[1.0], [5.0]],
                                                                                      dtype=torch.float64)
    # same mean: the classic R-hat only compares locations and sees nothing; the folded (tail) part does
    assert float(split_rhat(draws, rank_normalised=False)) < 1.05
    assert float(split_rhat(draws)) > 1.1


def test_bulk_ess_of_iid_and_autocorrelated_draws() -> None:
    iid = torch.randn(4, 1000, generator=gen(4), dtype=torch.float64)
    ess = float(bulk_ess(iid))
    assert 0.8 * 4000 < ess < 1.25 * 4000, ess
    # AR(1) with coefficient phi: ESS = S (1 - phi) / (1 + phi) = 4000 / 19 ~ 211
    phi, noise = 0.9, torch.randn(4, 4000, generator=gen(5), dtype=torch.float64)
    ar = torch.empty_like(noise)
    ar[:, 0] = noise[:, 0] / math.sqrt(1 - phi**2)
    for t in range(1, noise.shape[1]):
        ar[:, t] = phi * ar[:, t - 1] + noise[:, t]
    ess_ar = float(bulk_ess(ar[:, ::4]))  # 1000 per chain, lag-4 coefficient 0.9^4 = 0.656
    expected = 4000 * (1 - phi**4) / (1 + phi**4)
    assert 0.7 * expected < ess_ar < 1.4 * expected, (ess_ar, expected)
    # chains at different locations: few effective draws
    stuck = iid + torch.arange(4, dtype=torch.float64)[:, None] * 3
    assert float(bulk_ess(stuck)) < 100


def test_diagnostics_edge_cases() -> None:
    const = torch.ones(2, 10, dtype=torch.float64)
    assert math.isnan(float(split_rhat(const))) and math.isnan(float(bulk_ess(const)))
    ties = torch.randint(0, 3, (2, 200), generator=gen(6)).double()  # heavy ties: average ranks
    assert abs(float(split_rhat(ties)) - 1) < 0.05
    with pytest.raises(ValueError, match="at least 4 draws"):
        split_rhat(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="chains, draws_per_chain"):
        bulk_ess(torch.zeros(10))


# --------------------------------------------------------------------------------------------------------
# the model


def test_log_posterior_matches_distributions() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    net = MLP(3, 1, hidden=(4,)).double()
    w = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    u = torch.tensor(-0.3, dtype=torch.float64)
    scale, (a, b) = 0.7, (2.0, 3.0)
    lp = log_posterior(x, y, hidden=4, prior_scale=scale, noise_prior=(a, b))(torch.cat([w, u[None]]))
    f = functional_call(net, dict(net.named_parameters()), (x,))[:, 0]
    tau = torch.exp(-2 * u)
    dist = torch.distributions
    expected = (dist.Normal(f, u.exp()).log_prob(y).sum() + dist.Normal(0.0, scale).log_prob(w).sum()
                + dist.Gamma(a, b).log_prob(tau) + torch.log(2 * tau))  # p(u) = Gamma(tau) |d tau / d u|
    torch.testing.assert_close(lp, expected)


SMALL = dict(hidden=8, num_samples=60, burn_in=40, thin=2, num_leapfrog=10, chains=2, init_steps=300)


def synthetic(n: int = 60, noise: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = gen(seed)
    x = torch.rand(n + 20, 2, generator=g, dtype=torch.float64) * 4 - 2
    f = 0.8 * x[:, 0] - 0.5 * x[:, 1] + 0.3 * x[:, 0].abs()
    y = f + noise * torch.randn(n + 20, generator=g, dtype=torch.float64)
    return x[:n], y[:n], x[n:], f[n:]


def test_small_run_shapes_recovery_and_determinism() -> None:
    x, y, xt, ft = synthetic()
    res = hmc_regression(x, y, xt, seed=0, **SMALL)
    s = 2 * (60 // 2)
    assert res.sample_means.shape == (s, 20) and res.sample_means.dtype == torch.float64
    assert res.noise_vars.shape == (s,) and bool((res.noise_vars > 0).all())
    d = res.diagnostics
    assert d.draws == s and len(d.acceptance) == len(d.step_size) == len(d.divergences) == 2
    assert all(0 < a <= 1 for a in d.acceptance) and all(e > 0 for e in d.step_size)
    assert all(math.isfinite(v) for v in (d.rhat_f_max, d.ess_f_min, d.ess_f_median, d.rhat_log_sigma,
                                          d.ess_log_sigma, d.seconds))
    assert d.rhat_f_max >= 1 and d.rhat_f_classic_max >= 1 and 0 < d.ess_f_min <= d.ess_f_median
    # the network's weights come back with MLP's names and give the same predictions
    net = MLP(2, 1, hidden=(8,)).double()
    assert list(res.samples) == [n for n, _ in net.named_parameters()]
    torch.testing.assert_close(forward_samples(net, res.samples, xt)[..., 0], res.sample_means)
    # recovery: predictive mean near the true function, noise level near 0.1 (60 points, 8 hidden units)
    rmse = float(((res.sample_means.mean(0) - ft) ** 2).mean().sqrt())
    assert rmse < 0.25, rmse
    sigma = float(res.noise_vars.sqrt().mean())
    assert 0.06 < sigma < 0.2, sigma
    # equal seeds: identical; another seed: different
    again = hmc_regression(x, y, xt, seed=0, **SMALL)
    assert torch.equal(again.sample_means, res.sample_means) and torch.equal(again.noise_vars, res.noise_vars)
    other = hmc_regression(x, y, xt, seed=1, **SMALL)
    assert not torch.equal(other.sample_means, res.sample_means)


def test_test_metrics_match_regression_predictive() -> None:
    x, y, xt, ft = synthetic(n=30)
    res = hmc_regression(x, y, xt, **{**SMALL, "num_samples": 16, "burn_in": 16, "num_leapfrog": 3})
    yt = ft + 0.1
    pred = RegressionPredictive(res.sample_means, res.noise_vars[:, None].expand(-1, 20))
    m1, m2 = res.test_metrics(yt), res.test_metrics(yt[:, None], y_std=2.0)
    assert m1["test_ll"] == pytest.approx(float(pred.log_density(yt).mean()))
    assert m2["test_ll"] == pytest.approx(m1["test_ll"] - math.log(2.0))
    assert m2["rmse"] == pytest.approx(2 * m1["rmse"])
    assert m1["rmse"] == pytest.approx(float(((res.sample_means.mean(0) - yt) ** 2).mean().sqrt()))
    assert len(m1["test_ll_chains"]) == 2 and len(m1["rmse_chains"]) == 2
    with pytest.raises(ValueError, match="y_test has 19 rows"):
        res.test_metrics(yt[:19])


def test_input_validation_and_threads_restored() -> None:
    x, y, xt, _ = synthetic(n=10)
    fast = dict(hidden=2, num_samples=8, burn_in=8, thin=1, num_leapfrog=1, init_steps=0)
    cases = [
        ((x, y[:9], xt), {}, "x_train has 10 rows but y_train has 9"),
        ((x, y, xt[:, :1]), {}, "x_test has 1 features but x_train has 2"),
        ((x[:, 0], y, xt), {}, r"x_train must be a floating-point tensor \[N, F\]"),
        ((x, y[:, None].expand(10, 2), xt), {}, r"y_train must be \[N\] or \[N, 1\]"),
        ((x, y.long(), xt), {}, "y_train must be a floating-point tensor"),
        ((x, torch.where(y > 0, math.nan, y), xt), {}, "y_train has non-finite values"),
        ((x, y, xt), {"noise_prior": (0.0, 1.0)}, "noise_prior"),
        ((x, y, xt), {"burn_in": 4}, "burn_in must be >= 8"),
        ((x, y, xt), {"num_samples": 6, "thin": 2}, "at least 4 kept draws"),
        ((x, y, xt), {"chains": 0}, "chains"),
        ((x, y, xt), {"prior_scale": -1.0}, "scale"),
    ]
    for args, kw, message in cases:
        with pytest.raises(ValueError, match=message):
            hmc_regression(*args, **{**fast, **kw})
    threads = torch.get_num_threads()
    res = hmc_regression(x, y[:, None].float(), xt, num_threads=1, **fast)  # [N, 1] float32 targets accepted
    assert torch.get_num_threads() == threads and res.sample_means.shape == (16, 20)
