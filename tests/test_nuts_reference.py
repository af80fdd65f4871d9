"""The converged reference (optional extra ``reference``): NumPyro's NUTS against known posteriors, its potential
against bbh's log posterior, and bbh's R-hat / ESS against ArviZ's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("numpyro", reason="optional extra: pip install -e '.[reference]'")
az = pytest.importorskip("arviz", reason="optional extra: pip install -e '.[reference]'")

from bbh.reference.hmc_regression import bulk_ess, log_posterior, split_rhat  # noqa: E402
from bbh.reference.known import gaussian_target  # noqa: E402
from bbh.reference.nuts import nuts_regression, nuts_sample, regression_potential  # noqa: E402


def test_the_jax_potential_is_minus_bbhs_log_posterior():
    torch.manual_seed(0)
    x, y = torch.randn(30, 3, dtype=torch.float64), torch.randn(30, dtype=torch.float64)
    log_prob = log_posterior(x, y, hidden=4, prior_scale=0.7, noise_prior=(2.0, 0.5))
    potential = regression_potential(x, y, hidden=4, prior_scale=0.7, noise_prior=(2.0, 0.5))
    for _ in range(3):
        theta = torch.randn(4 * 3 + 2 * 4 + 1 + 1, dtype=torch.float64)
        assert float(potential(theta.numpy())) == pytest.approx(-float(log_prob(theta)), rel=1e-9, abs=1e-9)


def test_nuts_recovers_a_correlated_anisotropic_gaussian():
    import jax.numpy as jnp

    target = gaussian_target(6, "correlated", seed=1)
    precision = jnp.asarray(target.precision.numpy())
    mean = jnp.asarray(target.mean.numpy())

    def potential(theta):
        r = theta - mean
        return 0.5 * r @ precision @ r

    draws, extra = nuts_sample(potential, torch.randn(2, 6, dtype=torch.float64), warmup=300, samples=1500, seed=0)
    flat = draws.reshape(-1, 6)
    cov = torch.cov(flat.T)
    exact = target.cov
    # along the exact posterior's eigen-directions the std of the draws is the exact one within 10 %
    ratio = (torch.einsum("di,de,ei->i", target.eigvecs, cov, target.eigvecs) / target.stds**2).sqrt()
    assert float(ratio.min()) > 0.9 and float(ratio.max()) < 1.1, ratio
    assert float((flat.mean(0) - target.mean).norm() / exact.diagonal().max().sqrt()) < 0.15
    assert int(extra["diverging"].sum()) == 0
    assert float(split_rhat(draws[:, :, 0])) < 1.05


def test_split_rhat_and_bulk_ess_agree_with_arviz():
    rng = np.random.default_rng(0)
    mixed = rng.standard_normal((4, 500))
    ar = np.zeros((4, 500))
    for t in range(1, 500):
        ar[:, t] = 0.9 * ar[:, t - 1] + rng.standard_normal(4)
    stuck = mixed + np.array([0.0, 0.0, 0.0, 1.5])[:, None]     # one chain elsewhere: R-hat well above 1
    for chains in (mixed, ar, stuck):
        ours_r = float(split_rhat(torch.from_numpy(chains).unsqueeze(-1))[0])
        ours_e = float(bulk_ess(torch.from_numpy(chains).unsqueeze(-1))[0])
        theirs_r = float(az.rhat(az.convert_to_dataset(chains), method="rank")["x"])
        theirs_e = float(az.ess(az.convert_to_dataset(chains), method="bulk")["x"])
        assert ours_r == pytest.approx(theirs_r, rel=2e-3), (ours_r, theirs_r)
        assert ours_e == pytest.approx(theirs_e, rel=0.02), (ours_e, theirs_e)
    assert float(split_rhat(torch.from_numpy(stuck).unsqueeze(-1))[0]) > 1.1


def test_nuts_regression_returns_predictions_diagnostics_and_judges_a_short_run_unconverged():
    torch.manual_seed(0)
    x = torch.randn(40, 2, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(40, dtype=torch.float64)
    res = nuts_regression(x, y, x[:7], hidden=3, chains=2, warmup=30, samples=20, init_steps=50, max_tree_depth=5)
    assert res.sample_means.shape == (40, 7) and res.noise_vars.shape == (40,)
    assert res.rhat_f is not None and res.rhat_f.shape == (7,)
    assert math.isfinite(res.diagnostics.rhat_f_max) and res.diagnostics.draws == 40
    assert not res.meets_bar()                        # 20 draws a chain cannot give ESS >= 200
    metrics = res.test_metrics(y[:7])
    assert len(metrics["test_ll_chains"]) == 2 and math.isfinite(metrics["test_ll"])
    with pytest.raises(ValueError, match="chains"):
        nuts_regression(x, y, x[:7], hidden=3, chains=0)


def test_the_draws_are_cached_under_the_users_cache_folder(tmp_path, monkeypatch):
    from bbh.reference.nuts import cache_path, save_draws

    monkeypatch.setenv("BBH_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    x = torch.randn(20, 2, dtype=torch.float64)
    res = nuts_regression(x, x[:, 0], x[:3], hidden=2, chains=2, warmup=10, samples=8, init_steps=5,
                          max_tree_depth=3)
    path = cache_path("toy", 0, res.settings)
    assert path.parent == tmp_path / "cache" / "nuts" and path != cache_path("toy", 0, {**res.settings, "seed": 1})
    stored = torch.load(save_draws(path, res))
    assert torch.equal(stored["sample_means"], res.sample_means) and stored["settings"] == res.settings
    assert [p.name for p in path.parent.iterdir()] == [path.name]            # nothing half-written beside it
