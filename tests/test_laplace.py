"""Last-layer Laplace (bbh.posteriors.laplace): the GGN of each structure against brute-force autodiff, the
marginal likelihood and its maximiser, sampling and the MC / probit predictives against direct computations from
the dense Gaussian, bbh.evaluate with FGSM, the state_dict round trip, and clear errors."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import hessian, jacrev
from torch.utils.data import DataLoader, TensorDataset

import bbh
from bbh.evaluation import attacks
from bbh.posteriors import LastLayerLaplace, fit_last_layer_laplace

STRUCTURES = ("kron", "diag", "full")


def tiny_net(seed: int = 0, d_in: int = 3, hidden: int = 4, classes: int = 3, bias: bool = True) -> nn.Sequential:
    """A float64 MLP whose last Linear gives the logits: P = classes * (hidden + bias) = 15 by default."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes, bias=bias)).double()


def tiny_data(n: int = 20, d_in: int = 3, classes: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def features(model: nn.Sequential, x: Tensor) -> Tensor:
    """φ̃(x) computed directly (not through the method's hook): the hidden layer plus a 1."""
    phi = model[:-1](x)
    return torch.cat([phi, torch.ones(x.shape[0], 1, dtype=phi.dtype)], 1) if model[-1].bias is not None else phi


def theta_star(model: nn.Sequential) -> Tensor:
    last = model[-1]
    w = last.weight.detach()
    return (torch.cat([w, last.bias.detach()[:, None]], 1) if last.bias is not None else w).flatten()


def brute_ggn(model: nn.Sequential, x: Tensor) -> Tensor:
    """Σ_n J_nᵀ (∂²CE/∂f²) J_n with J_n = ∂f_n/∂θ from jacrev and the CE Hessian from torch.func.hessian."""
    phi, theta = features(model, x), theta_star(model)
    classes = model[-1].out_features
    total = torch.zeros(theta.numel(), theta.numel(), dtype=torch.float64)
    for n in range(x.shape[0]):
        def logits(t: Tensor, n: int = n) -> Tensor:
            return t.reshape(classes, -1) @ phi[n]
        jac = jacrev(logits)(theta)  # [C, P]
        f = logits(theta)
        h_f = hessian(lambda z: -F.log_softmax(z, -1)[0])(f)  # the CE's Hessian does not depend on the label
        total += jac.T @ h_f @ jac
    return total


def nll_hessian(model: nn.Sequential, x: Tensor, y: Tensor) -> Tensor:
    """The Hessian of Σ_n CE(θ) in the last layer's parameters (= the GGN: the logits are linear in θ)."""
    phi, classes = features(model, x), model[-1].out_features
    return hessian(lambda t: F.cross_entropy(phi @ t.reshape(classes, -1).T, y, reduction="sum"))(theta_star(model))


def fitted(structure: str = "kron", *, n: int = 20, prior_precision: float | str = 1.0, **kw) -> LastLayerLaplace:
    model = tiny_net()
    return fit_last_layer_laplace(model, tiny_data(n), structure=structure, prior_precision=prior_precision, **kw)


# ---------------------------------------------------------------------------------------------- (a) the GGN
def test_full_ggn_equals_brute_force_ggn_and_nll_hessian():
    model, (x, y) = tiny_net(), tiny_data()
    la = fit_last_layer_laplace(model, (x, y), structure="full", prior_precision=1.0, batch_size=7)
    brute = brute_ggn(model, x)
    torch.testing.assert_close(la.ggn_matrix(), brute, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(la.ggn_matrix(), nll_hessian(model, x, y), atol=1e-10, rtol=1e-9)


def test_diag_ggn_is_the_diagonal_of_the_exact_ggn():
    model, (x, y) = tiny_net(), tiny_data()
    la = fit_last_layer_laplace(model, (x, y), structure="diag", prior_precision=1.0)
    torch.testing.assert_close(torch.diagonal(la.ggn_matrix()), torch.diagonal(brute_ggn(model, x)), atol=1e-10,
                               rtol=1e-9)
    assert torch.count_nonzero(la.ggn_matrix() - torch.diag(torch.diagonal(la.ggn_matrix()))) == 0


def test_kron_is_exact_for_one_example():
    model, (x, y) = tiny_net(), tiny_data(1)
    la = fit_last_layer_laplace(model, (x, y), structure="kron", prior_precision=1.0)
    torch.testing.assert_close(la.ggn_matrix(), brute_ggn(model, x), atol=1e-10, rtol=1e-9)


def test_kron_factors_are_summed_output_hessians_and_mean_feature_products():
    """A = Σ_n ∂²CE_n/∂f² (carries N), B = (1/N) Σ_n φ̃_n φ̃_nᵀ: A ⊗ B = N · E[Λ] ⊗ E[φ̃φ̃ᵀ]."""
    model, (x, y) = tiny_net(), tiny_data(12)
    la = fit_last_layer_laplace(model, (x, y), structure="kron", prior_precision=1.0)
    logits = model(x).detach()
    out = sum(hessian(lambda z: -F.log_softmax(z, -1)[0])(f) for f in logits)
    phi = features(model, x).detach()
    torch.testing.assert_close(la.kron_out, out, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(la.kron_in, phi.T @ phi / 12, atol=1e-10, rtol=1e-9)
    # KFAC is not exact for N > 1 (so the N = 1 test above is not vacuous)
    assert not torch.allclose(la.ggn_matrix(), brute_ggn(model, x), atol=1e-6)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_data_loader_batches_and_num_data_scaling(structure):
    model, (x, y) = tiny_net(), tiny_data(10)
    whole = LastLayerLaplace(model, structure=structure).fit((x, y), prior_precision=1.0)
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    batched = LastLayerLaplace(model, structure=structure).fit(loader, prior_precision=1.0)
    torch.testing.assert_close(batched.ggn_matrix(), whole.ggn_matrix(), atol=1e-12, rtol=1e-10)
    scaled = LastLayerLaplace(model, structure=structure).fit((x, y), prior_precision=1.0, num_data=30)
    torch.testing.assert_close(scaled.ggn_matrix(), 3 * whole.ggn_matrix(), atol=1e-12, rtol=1e-10)
    assert float(scaled.map_log_likelihood) == pytest.approx(3 * float(whole.map_log_likelihood), rel=1e-12)
    assert float(scaled.num_data) == 30 and float(whole.num_data) == 10


# ---------------------------------------------------------------------------------------------- (b) marglik
def brute_log_marglik(la: LastLayerLaplace, model: nn.Sequential, x: Tensor, y: Tensor, delta: float) -> float:
    log_lik = -float(F.cross_entropy(model(x), y, reduction="sum").detach())
    theta = theta_star(model)
    dense = la.ggn_matrix() + delta * torch.eye(theta.numel(), dtype=torch.float64)
    return (log_lik - 0.5 * delta * float(theta @ theta) + 0.5 * theta.numel() * math.log(delta)
            - 0.5 * float(torch.logdet(dense)))


@pytest.mark.parametrize("structure", STRUCTURES)
def test_log_marginal_likelihood_matches_brute_force(structure):
    model, (x, y) = tiny_net(), tiny_data()
    la = fit_last_layer_laplace(model, (x, y), structure=structure, prior_precision=1.0)
    for delta in (0.01, 0.3, 1.0, 25.0):
        assert float(la.log_marginal_likelihood(delta)) == pytest.approx(
            brute_log_marglik(la, model, x, y, delta), abs=1e-9, rel=1e-10)
    assert float(la.log_marginal_likelihood()) == pytest.approx(brute_log_marglik(la, model, x, y, 1.0), rel=1e-10)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_marglik_prior_precision_maximises_the_log_marginal_likelihood(structure):
    la = fitted(structure, prior_precision="marglik")
    best = la.prior_precision
    value = float(la.log_marginal_likelihood(best))
    grid = best * torch.logspace(-2, 2, 81, dtype=torch.float64, base=10)
    values = torch.tensor([float(la.log_marginal_likelihood(float(d))) for d in grid], dtype=torch.float64)
    assert float(values.max()) <= value + 1e-9
    # the grid's argmax is next to δ* (a grid step is 10^0.05 = 12 %)
    assert float(grid[values.argmax()]) == pytest.approx(best, rel=0.13)
    # stationary: the derivative in δ vanishes at δ*
    delta = torch.tensor(best, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(la.log_marginal_likelihood(delta), delta)
    assert abs(float(grad)) * best < 1e-6
    # a wide search finds the same maximiser from far away
    wide = torch.logspace(-4, 4, 801, dtype=torch.float64)
    wide_values = torch.tensor([float(la.log_marginal_likelihood(float(d))) for d in wide], dtype=torch.float64)
    assert float(wide[wide_values.argmax()]) == pytest.approx(best, rel=0.03)


# ---------------------------------------------------------------------------------------------- (c) sampling
@pytest.mark.parametrize("structure", STRUCTURES)
def test_posterior_covariance_is_the_inverse_precision(structure):
    la = fitted(structure, prior_precision=0.7)
    dense = la.ggn_matrix() + 0.7 * torch.eye(la.n_params, dtype=torch.float64)
    torch.testing.assert_close(la.posterior_covariance(), torch.linalg.inv(dense), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_sample_covariance_of_drawn_weights_matches_sigma(structure):
    la = fitted(structure, prior_precision=0.5)
    torch.manual_seed(3)
    theta = la.sample_parameters(100_000).reshape(100_000, -1)
    sigma = la.posterior_covariance()
    scale = float(sigma.abs().max())
    torch.testing.assert_close(theta.mean(0), theta_star(la.model), atol=0.02 * math.sqrt(scale), rtol=0)
    torch.testing.assert_close(torch.cov(theta.T), sigma, atol=0.03 * scale, rtol=0)
    ws = la.weight_samples(4)
    assert ws["2.weight"].shape == (4, 3, 4) and ws["2.bias"].shape == (4, 3)


@pytest.mark.parametrize("structure", ["kron", "diag"])
def test_mc_predictive_matches_direct_sampling_from_the_dense_gaussian(structure):
    model, (x, y) = tiny_net(), tiny_data()
    la = fit_last_layer_laplace(model, (x, y), structure=structure, prior_precision=0.3)
    x_test = tiny_data(6, seed=5)[0] * 2
    torch.manual_seed(4)
    mc = la.predict(x_test, 20_000).mean
    gauss = torch.distributions.MultivariateNormal(theta_star(model), la.posterior_covariance())
    theta = gauss.sample((20_000,)).reshape(20_000, 3, -1)
    direct = torch.einsum("bd,scd->sbc", features(model, x_test), theta).softmax(-1).mean(0).detach()
    torch.testing.assert_close(mc, direct, atol=0.02, rtol=0)
    map_probs = model(x_test).softmax(-1).detach()
    assert float((mc - map_probs).abs().max()) > 0.05  # the posterior matters here: the comparison is not vacuous


# ---------------------------------------------------------------------------------------------- (d) probit
@pytest.mark.parametrize("structure", STRUCTURES)
def test_logit_variance_and_probit_match_j_sigma_jt(structure):
    model, (x, y) = tiny_net(), tiny_data()
    la = fit_last_layer_laplace(model, (x, y), structure=structure, prior_precision=0.4, predictive="probit")
    x_test = tiny_data(5, seed=7)[0]
    phi, sigma = features(model, x_test).detach(), la.posterior_covariance()
    var = torch.stack([torch.diagonal(j @ sigma @ j.T)
                       for j in (jacrev(lambda t, p=p: t.reshape(3, -1) @ p)(theta_star(model)) for p in phi)])
    torch.testing.assert_close(la.logit_variance(x_test).detach(), var, atol=1e-10, rtol=1e-8)
    expected = (model(x_test) / torch.sqrt(1 + math.pi / 8 * var)).softmax(-1).detach()
    out = la.sample_outputs(x_test, 50)
    assert out.shape == (1, 5, 3)  # one deterministic draw whatever n_samples is
    torch.testing.assert_close(out[0].softmax(-1).detach(), expected, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(la.predict(x_test).mean, expected, atol=1e-10, rtol=1e-8)


def test_probit_is_close_to_mc_on_a_tiny_example():
    """Independent logits (diag) with moderate variance: the probit approximation is within 0.03 of the MC mean."""
    model, (x, y) = tiny_net(), tiny_data()
    la = fit_last_layer_laplace(model, (x, y), structure="diag", prior_precision=1.0)
    x_test = tiny_data(8, seed=5)[0] * 2
    torch.manual_seed(0)
    mc = la.predict(x_test, 40_000).mean
    la.predictive = "probit"
    probit = la.predict(x_test).mean
    torch.testing.assert_close(probit, mc, atol=0.03, rtol=0)
    assert float((mc - model(x_test).softmax(-1).detach()).abs().max()) > 0.05  # not vacuous: both differ from the MAP


# ---------------------------------------------------------------------------------------------- (e) evaluate
@pytest.mark.parametrize("predictive", ["mc", "probit"])
def test_bbh_evaluate_runs_with_fgsm(predictive):
    model = tiny_net()
    x, y = tiny_data(30)
    method = bbh.create("map", model)
    la = fit_last_layer_laplace(method, (x, y), structure="kron", predictive=predictive)
    assert la.model is model
    ood = tiny_data(20, seed=9)[0] * 5
    results = bbh.evaluate(la, test=(x, y), ood=ood, attacks={"fgsm": (0.0, 0.2)}, n_samples=16, seed=0)
    assert results.samples == (16 if predictive == "mc" else 1)
    assert math.isfinite(results.test.nll) and 0 <= results.test.error_percent <= 100
    assert len(results.adversarial["fgsm"].points) == 2
    assert math.isfinite(results.ood["ood"].detection["entropy"]["auroc"])
    x_adv = attacks.fgsm(la, x[:5], y[:5], 0.1, n_samples=8, gradient="expectation")
    torch.testing.assert_close((x_adv - x[:5]).abs(), torch.full_like(x_adv, 0.1))  # non-zero input gradients


@pytest.mark.parametrize("predictive", ["mc", "probit"])
def test_outputs_are_differentiable_in_x(predictive):
    la = fitted("kron", predictive=predictive)
    x = tiny_data(3, seed=11)[0].requires_grad_(True)

    def outputs(inp: Tensor) -> Tensor:
        torch.manual_seed(0)  # the same weight draws on every call: a deterministic function of x
        return la.sample_outputs(inp, 3)

    assert torch.autograd.gradcheck(outputs, (x,))


def test_per_copy_outputs_are_draws_on_their_own_copy():
    la = fitted("kron")
    x = tiny_data(4, seed=3)[0]
    xs = torch.stack([x, 2 * x])
    torch.manual_seed(5)
    out = la.per_copy_outputs(xs)
    torch.manual_seed(5)
    theta = la.sample_parameters(2)
    phi = features(la.model, xs.flatten(0, 1)).reshape(2, 4, -1)
    torch.testing.assert_close(out, torch.einsum("sbd,scd->sbc", phi, theta).detach())


# ---------------------------------------------------------------------------------------------- (f) state
@pytest.mark.parametrize("structure", STRUCTURES)
def test_state_dict_round_trip(structure):
    la = fitted(structure, prior_precision="marglik")
    buffer = io.BytesIO()
    torch.save(la.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    with pytest.raises(RuntimeError, match="not fitted"):
        LastLayerLaplace(tiny_net(seed=123), structure=structure).sample_outputs(tiny_data(2)[0], 2)
    # loaded into one fitted elsewhere, whose cached decompositions must not survive the load
    fresh = LastLayerLaplace(tiny_net(seed=123), structure=structure).fit(tiny_data(9, seed=4), prior_precision=3.0)
    fresh.predictive = "probit"
    fresh.sample_outputs(tiny_data(2)[0])
    fresh.predictive = "mc"
    fresh.load_state_dict(state)
    assert fresh.prior_precision == la.prior_precision and fresh.n_params == la.n_params == 15
    x = tiny_data(5, seed=2)[0]
    torch.manual_seed(8)
    a = la.sample_outputs(x, 7)
    torch.manual_seed(8)
    b = fresh.sample_outputs(x, 7)
    assert torch.equal(a, b)
    la.predictive = fresh.predictive = "probit"
    assert torch.equal(la.sample_outputs(x), fresh.sample_outputs(x))
    assert float(fresh.log_marginal_likelihood()) == float(la.log_marginal_likelihood())
    other = "diag" if structure != "diag" else "kron"
    with pytest.raises(ValueError, match=f"structure='{structure}'"):
        LastLayerLaplace(tiny_net(), structure=other).load_state_dict(state)


def test_no_bias_last_layer():
    model, (x, y) = tiny_net(bias=False), tiny_data()
    la = fit_last_layer_laplace(model, (x, y), structure="full", prior_precision=1.0)
    assert la.n_params == 12 and set(la.weight_samples(2)) == {"2.weight"}
    torch.testing.assert_close(la.ggn_matrix(), brute_ggn(model, x), atol=1e-10, rtol=1e-9)


# ---------------------------------------------------------------------------------------------- (g) errors
class ScaledOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2).double()

    def forward(self, x: Tensor) -> Tensor:
        return 2 * self.fc(x)


def test_errors_for_models_and_likelihoods():
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        fit_last_layer_laplace(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten()), (torch.randn(4, 1, 5),
                                                                                 torch.zeros(4).long()))
    with pytest.raises(ValueError, match="classification"):
        fit_last_layer_laplace(bbh.create("map", tiny_net(), likelihood="gaussian"), tiny_data())
    with pytest.raises(ValueError, match="classification"):
        LastLayerLaplace(tiny_net(), likelihood="gaussian")
    with pytest.raises(ValueError, match="does not produce the model's outputs"):
        fit_last_layer_laplace(ScaledOutput(), (tiny_data()[0], tiny_data(classes=2)[1]))
    with pytest.raises(TypeError, match="MAP method or an nn.Module"):
        fit_last_layer_laplace(bbh.create("ensemble", tiny_net(), members=1), tiny_data())
    with pytest.raises(TypeError, match="nn.Module"):
        fit_last_layer_laplace("model", tiny_data())
    with pytest.raises(ValueError, match="above the limit"):
        LastLayerLaplace(nn.Sequential(nn.Linear(200, 100)), structure="full")


def test_errors_for_data():
    model = tiny_net()
    x, y = tiny_data()
    with pytest.raises(ValueError, match=r"\[B, 3\]"):  # wrong feature count, caught before any forward pass
        fit_last_layer_laplace(model, (torch.randn(20, 5, dtype=torch.float64), y))
    with pytest.raises(ValueError, match="integer class labels"):
        fit_last_layer_laplace(model, (x, y.double()))
    with pytest.raises(ValueError, match="same number of examples"):
        fit_last_layer_laplace(model, (x, y[:5]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        fit_last_layer_laplace(model, (x, y + 3))
    with pytest.raises(TypeError, match="labels are needed"):
        fit_last_layer_laplace(model, x)
    with pytest.raises(TypeError, match=r"\(x, y, \.\.\.\) tuple"):
        fit_last_layer_laplace(model, [x, x, x])
    with pytest.raises(ValueError, match="no examples"):
        fit_last_layer_laplace(model, [])


def test_errors_for_options_and_use():
    model, data = tiny_net(), tiny_data()
    for kw, match in [(dict(structure="block"), "unknown structure"), (dict(predictive="glm"), "unknown predictive"),
                      (dict(prior_precision=-1.0), "prior_precision must be"),
                      (dict(prior_precision="auto"), "prior_precision must be"), (dict(num_data=0), "num_data")]:
        with pytest.raises(ValueError, match=match):
            fit_last_layer_laplace(model, data, **kw)
    la = fit_last_layer_laplace(model, data)
    with pytest.raises(RuntimeError, match="not trained"):
        la.loss(*data, num_data=20)
    assert la.trainable_parameters() == []
    with pytest.raises(ValueError, match="prior_precision must be"):
        la.log_marginal_likelihood(0.0)
    with pytest.raises(ValueError, match="n_samples"):
        la.sample_outputs(data[0], 0)
