"""Regression as a first-class task: learned Gaussian noise, heteroscedastic outputs, the regression predictive."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal

import bbh
from bbh.core.likelihoods import Heteroscedastic, LearnedGaussian
from bbh.core.metrics import gaussian_mixture_log_density
from bbh.core.predictive import Predictive, RegressionPredictive

METHODS = {  # method -> options for a 1-16-1 MLP (``net.1`` is its ReLU: MC-Dropout's site)
    "map": {},
    "mc-dropout": {"sites": ["net.1"], "rate": 0.2},
    "ensemble": {"members": 3, "adversarial": False},
    "bbb": {},
    "mnf": {},
    "bbh": {},
}


def _line_data(n: int = 300, noise: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 4 - 2
    return x, 2 * x + noise * torch.randn(n, 1, generator=g)


# ----------------------------------------------------------------------------------------- the density
def test_mixture_log_density_by_hand():
    means = torch.tensor([[[0.0]], [[2.0]]], dtype=torch.float64)      # S = 2 draws, B = 1, D = 1
    variances = torch.tensor([[[1.0]], [[4.0]]], dtype=torch.float64)
    y = torch.tensor([[1.0]], dtype=torch.float64)
    # (1/2) [N(1; 0, 1) + N(1; 2, 4)] = (1/2) [e^{-1/2} / sqrt(2π) + e^{-1/8} / (2 sqrt(2π))]
    root = math.sqrt(2 * math.pi)
    by_hand = math.log(0.5 * (math.exp(-0.5) / root + math.exp(-0.125) / (2 * root)))
    got = gaussian_mixture_log_density(means, variances, y)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(by_hand, rel=1e-12)


def test_mixture_log_density_of_one_draw_is_the_normal_log_prob_summed_over_outputs():
    g = torch.Generator().manual_seed(3)
    mu, sigma = torch.randn(1, 5, 3, generator=g), torch.rand(1, 5, 3, generator=g) + 0.2
    y = torch.randn(5, 3, generator=g)
    expected = Normal(mu[0], sigma[0]).log_prob(y).sum(-1)
    torch.testing.assert_close(gaussian_mixture_log_density(mu, sigma ** 2, y), expected)
    # far from every component the density underflows, its log does not
    far = gaussian_mixture_log_density(mu.repeat(4, 1, 1), sigma.repeat(4, 1, 1) ** 2, y + 1e3)
    assert torch.isfinite(far).all() and (far < -1e4).all()


def test_mixture_log_density_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[S, B, \*D\]"):
        gaussian_mixture_log_density(torch.zeros(2, 4, 1), torch.ones(2, 4, 1), torch.zeros(4))


def test_regression_predictive_decomposition():
    means = torch.tensor([[[1.0], [0.0]], [[3.0], [0.0]]])     # S = 2, B = 2, D = 1
    variances = torch.tensor([[[0.5], [1.0]], [[1.5], [1.0]]])
    pred = RegressionPredictive(means, variances)
    torch.testing.assert_close(pred.mean, torch.tensor([[2.0], [0.0]]))
    torch.testing.assert_close(pred.aleatoric_var, torch.tensor([[1.0], [1.0]]))
    torch.testing.assert_close(pred.epistemic_var, torch.tensor([[1.0], [0.0]]))   # (1/S) Σ (μ_s - μ̄)²
    torch.testing.assert_close(pred.variance, torch.tensor([[2.0], [1.0]]))
    y = torch.tensor([[2.0], [0.5]])
    torch.testing.assert_close(pred.log_density(y), gaussian_mixture_log_density(means, variances, y))
    with pytest.raises(ValueError, match=r"\[S, B, \*D\]"):
        RegressionPredictive(means, variances[:1])


# ----------------------------------------------------------------------------------------- learned noise
def test_learned_gaussian_recovers_the_noise_and_is_trained_and_saved():
    torch.manual_seed(0)
    x, y = _line_data()
    method = bbh.create("map", bbh.models.MLP(1, 1, hidden=(20,)), likelihood="gaussian", prior_scale=None)
    assert isinstance(method.likelihood, LearnedGaussian) and method.likelihood.sigma == pytest.approx(1.0)
    log_sigma = method.likelihood.log_sigma
    assert any(p is log_sigma for p in method.trainable_parameters())
    bbh.Trainer(method, steps=1500, lr=0.01, device="cpu", seed=0, progress=False,
                handle_signals=False).fit((x, y))
    sigma = method.likelihood.sigma
    assert sigma == pytest.approx(0.5, rel=0.15), sigma
    pred = method.predict(x, 1)
    torch.testing.assert_close(pred.aleatoric_var, torch.full_like(pred.mean, sigma ** 2))

    state = method.state_dict()
    assert "likelihood.log_sigma" in state
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = bbh.create("map", bbh.models.MLP(1, 1, hidden=(20,)), likelihood="gaussian", prior_scale=None)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.likelihood.sigma == pytest.approx(sigma, rel=1e-6)
    torch.testing.assert_close(fresh.predict(x, 1).mean, pred.mean)


def test_heteroscedastic_predicts_more_noise_where_the_data_is_noisier():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(600, 1, generator=g) * 6 - 3
    y = torch.sin(x) + (0.05 + 0.5 * x.abs()) * torch.randn(600, 1, generator=g)   # noise grows with |x|
    method = bbh.create("map", bbh.models.MLP(1, 2, hidden=(50,)), likelihood="heteroscedastic", prior_scale=None)
    assert isinstance(method.likelihood, Heteroscedastic)
    bbh.Trainer(method, steps=1500, lr=0.01, device="cpu", seed=0, progress=False,
                handle_signals=False).fit((x, y))
    pred = method.predict(torch.tensor([[0.0], [-2.0], [2.0]]), 1)
    assert isinstance(pred, RegressionPredictive) and pred.mean.shape == (3, 1)
    std = pred.aleatoric_var.sqrt().squeeze(-1)
    assert std[1] > 2 * std[0] and std[2] > 2 * std[0], std       # true: 0.05 at 0, 1.05 at |x| = 2


def test_heteroscedastic_log_prob_and_floor():
    lik = Heteroscedastic(min_variance=1e-3)
    outputs = torch.tensor([[0.5, math.log(4.0)], [0.0, -1e4]])   # [B, 2D], D = 1
    y = torch.tensor([[1.5], [0.0]])
    lp = lik.log_prob(outputs, y)
    torch.testing.assert_close(lp[0], Normal(0.5, math.sqrt(4.0 + 1e-3)).log_prob(torch.tensor(1.5)))
    torch.testing.assert_close(lp[1], Normal(0.0, math.sqrt(1e-3)).log_prob(torch.tensor(0.0)))  # the floor
    with pytest.raises(ValueError, match=r"\[\.\.\., B, 2D\]"):
        lik.log_prob(torch.zeros(2, 3), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="do not match outputs"):
        lik.log_prob(torch.zeros(2, 4), torch.zeros(2, 1))


# ----------------------------------------------------------------------------------------- every method
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_and_predicts_with_a_learned_gaussian(name):
    torch.manual_seed(0)
    x, y = _line_data(64)
    method = bbh.create(name, bbh.models.MLP(1, 1, hidden=(16,)), likelihood="gaussian", **METHODS[name])
    start = method.likelihood.log_sigma.item()
    history = bbh.Trainer(method, steps=5, lr=0.01, device="cpu", seed=0, progress=False,
                          handle_signals=False).fit((x, y))
    assert math.isfinite(history[-1]["loss"])
    assert method.likelihood.log_sigma.item() != start          # the noise level is trained
    pred = method.predict(x[:10], 8)
    assert isinstance(pred, RegressionPredictive)
    draws = method.draws(8)
    assert pred.sample_means.shape == pred.sample_variances.shape == (draws, 10, 1)
    for value in (pred.mean, pred.aleatoric_var, pred.epistemic_var, pred.variance, pred.log_density(y[:10])):
        assert torch.isfinite(value).all()
    assert pred.log_density(y[:10]).shape == (10,)
    if name == "map":
        assert (pred.epistemic_var == 0).all()
    else:
        assert (pred.epistemic_var > 0).all()
    torch.testing.assert_close(pred.variance, pred.aleatoric_var + pred.epistemic_var)


@pytest.mark.parametrize("likelihood", [bbh.likelihoods.Gaussian(0.5), "gaussian"])
def test_predict_on_one_output_regression_is_not_a_softmax(likelihood):
    torch.manual_seed(0)
    method = bbh.create("bbh", bbh.models.MLP(1, 1, hidden=(16,)), likelihood=likelihood)
    x = torch.linspace(-1, 1, 7).unsqueeze(-1)
    pred = method.predict(x, 5)
    assert not isinstance(pred, Predictive) and isinstance(pred, RegressionPredictive)
    assert not torch.allclose(pred.mean, torch.ones_like(pred.mean))      # the old all-1.0 "probabilities"
    with torch.no_grad():
        torch.manual_seed(1)
        outputs = method.sample_outputs(x, 5)
    assert pred.mean.shape == outputs.shape[1:] == (7, 1)


def test_classification_still_gets_probabilities_and_evaluate_refuses_regression():
    method = bbh.create("map", bbh.models.MLP(2, 3, hidden=(8,)))
    pred = method.predict(torch.randn(4, 2), 1)
    assert isinstance(pred, Predictive)
    torch.testing.assert_close(pred.mean.sum(-1), torch.ones(4))
    regression = bbh.create("map", bbh.models.MLP(2, 1, hidden=(8,)), likelihood="gaussian")
    with pytest.raises(ValueError, match="regression likelihood.*method.predict"):
        bbh.evaluate(regression, (torch.randn(4, 2), torch.randn(4, 1)))


def test_heteroscedastic_every_draw_has_its_own_noise_in_an_ensemble():
    method = bbh.create("ensemble", bbh.models.MLP(1, 2, hidden=(8,)), likelihood="heteroscedastic", members=3,
                        adversarial=False)
    pred = method.predict(torch.zeros(1, 1), 3)
    assert pred.sample_variances.shape == (3, 1, 1)
    assert len(set(pred.sample_variances.flatten().tolist())) == 3


def test_learned_gaussian_rejects_bad_init():
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="init_sigma must be finite and > 0"):
            LearnedGaussian(bad)
    assert isinstance(LearnedGaussian(0.3), nn.Module) and LearnedGaussian(0.3).sigma == pytest.approx(0.3)
