"""Tests of the observation models in :mod:`bbh.likelihoods`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from bbh.core.likelihoods import Categorical, Gaussian, Heteroscedastic, LearnedGaussian, as_likelihood

F64 = torch.float64


# ----------------------------------------------------------------------------------------- Categorical
@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
def test_categorical_equals_minus_cross_entropy(lead):
    g = torch.Generator().manual_seed(len(lead))
    b, k = 7, 4
    logits = torch.randn(*lead, b, k, generator=g, dtype=F64) * 3
    y = torch.randint(0, k, (b,), generator=g)
    lp = Categorical().log_prob(logits, y)
    assert lp.shape == (*lead, b)
    flat = logits.reshape(-1, b, k)
    expected = torch.stack([-F.cross_entropy(s, y, reduction="none") for s in flat]).reshape(*lead, b)
    torch.testing.assert_close(lp, expected, rtol=1e-12, atol=1e-12)
    assert (lp <= 0).all()


def test_categorical_is_stable_for_extreme_logits_and_differentiable():
    logits = torch.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 5e3]], requires_grad=True)
    y = torch.tensor([1, 2])
    lp = Categorical().log_prob(logits, y)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp, -F.cross_entropy(logits, y, reduction="none"))
    assert lp[0].item() == pytest.approx(-2e4, rel=1e-6)
    lp.sum().backward()
    # d log softmax_y / d logits = onehot(y) - softmax
    expected = F.one_hot(y, 3).float() - F.softmax(logits.detach(), -1)
    torch.testing.assert_close(logits.grad, expected)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_categorical_integer_label_dtypes_work_or_fail_clearly(dtype):
    # Labels straight from numpy/idx files are often uint8. The check in log_prob lets every
    # non-floating dtype through, so each must either work (same values as int64 labels) or be
    # rejected with the same clear ValueError that float labels get -- not crash inside gather().
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([4, 0, 2], dtype=dtype)
    expected = Categorical().log_prob(logits, y.long())
    try:
        got = Categorical().log_prob(logits, y)
    except ValueError as err:
        assert "label" in str(err) and str(dtype) in str(err)
    else:
        torch.testing.assert_close(got, expected)


def test_categorical_errors_are_clear():
    cat = Categorical()
    with pytest.raises(ValueError, match=r"logits \[\.\.\., B, K\], got shape \(5,\)"):
        cat.log_prob(torch.randn(5), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"class labels of shape \[4\], got \(3,\)"):
        cat.log_prob(torch.randn(2, 4, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"class labels of shape \[4\], got \(4, 1\)"):
        cat.log_prob(torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class labels, got dtype torch.float32"):
        cat.log_prob(torch.randn(4, 3), torch.zeros(4))
    assert repr(cat) == "Categorical()"


# ----------------------------------------------------------------------------------------- Gaussian
def test_gaussian_matches_torch_normal_with_sample_dims():
    g = torch.Generator().manual_seed(1)
    s, b, sigma = 6, 9, 9.0
    outputs = torch.randn(s, b, 1, generator=g, dtype=F64) * 20
    y = torch.randn(b, 1, generator=g, dtype=F64) * 20
    lp = Gaussian(sigma).log_prob(outputs, y)
    assert lp.shape == (s, b)
    expected = Normal(outputs, sigma).log_prob(y).squeeze(-1)
    torch.testing.assert_close(lp, expected, rtol=1e-12, atol=1e-12)
    # Exact value at y = f: -log sigma - log(2 pi) / 2
    at_mean = Gaussian(sigma).log_prob(y.unsqueeze(0), y)
    torch.testing.assert_close(at_mean, torch.full((1, b), -math.log(sigma) - 0.5 * math.log(2 * math.pi),
                                                   dtype=F64))


@pytest.mark.parametrize("out_shape, y_shape, lp_shape", [
    ((9, 1), (9, 1), (9,)),              # no sample dim
    ((2, 3, 9, 1), (9, 1), (2, 3, 9)),   # two leading sample dims
    ((4, 9), (9,), (4, 9)),              # [B] targets, [S, B] outputs
    ((4, 9, 3), (9, 3), (4, 9)),         # multi-output: summed over the output dims
    ((4, 9, 2, 3), (9, 2, 3), (4, 9)),
])
def test_gaussian_shapes_sum_over_output_dims(out_shape, y_shape, lp_shape):
    g = torch.Generator().manual_seed(2)
    outputs = torch.randn(out_shape, generator=g, dtype=F64)
    y = torch.randn(y_shape, generator=g, dtype=F64)
    sigma = 0.7
    lp = Gaussian(sigma).log_prob(outputs, y)
    assert lp.shape == lp_shape
    per_dim = Normal(outputs, sigma).log_prob(y.expand(out_shape))
    n_out = len(y_shape) - 1  # trailing output dims after the batch dim
    expected = per_dim.sum(dim=tuple(range(-n_out, 0))) if n_out else per_dim
    torch.testing.assert_close(lp, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("out_shape, y_shape", [
    ((5, 9, 1), (9,)),       # targets [B] against outputs [S, B, 1]
    ((5, 9, 1), (8, 1)),     # wrong batch size
    ((5, 9, 1), (9, 2)),     # wrong output size
    ((9, 1), (5, 9, 1)),     # targets with more dims than the outputs
])
def test_gaussian_mismatched_shapes_raise(out_shape, y_shape):
    with pytest.raises(ValueError, match="do not match outputs") as info:
        Gaussian(1.0).log_prob(torch.randn(out_shape), torch.randn(y_shape))
    assert str(tuple(y_shape)) in str(info.value) and str(tuple(out_shape)) in str(info.value)


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.inf, math.nan])
def test_gaussian_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        Gaussian(sigma)


def test_gaussian_gradient_and_repr():
    outputs = torch.tensor([[1.0], [3.0]], requires_grad=True)
    y = torch.tensor([[2.0], [2.0]])
    Gaussian(2.0).log_prob(outputs, y).sum().backward()
    # d/df of -(y - f)^2 / (2 sigma^2) = (y - f) / sigma^2
    torch.testing.assert_close(outputs.grad, torch.tensor([[0.25], [-0.25]]))
    assert repr(Gaussian(9.0)) == "Gaussian(sigma=9)"


# ----------------------------------------------------------------------------------------- as_likelihood
def test_as_likelihood():
    assert isinstance(as_likelihood("categorical"), Categorical)
    gauss = Gaussian(3.0)
    assert as_likelihood(gauss) is gauss
    assert isinstance(as_likelihood("gaussian"), LearnedGaussian)
    assert as_likelihood("gaussian").sigma == pytest.approx(1.0)
    assert isinstance(as_likelihood("heteroscedastic"), Heteroscedastic)
    with pytest.raises(ValueError, match="unknown likelihood 'normal'.*'gaussian'.*Gaussian\\(sigma\\)"):
        as_likelihood("normal")
    with pytest.raises(TypeError, match="log_prob"):
        as_likelihood(object())


# ----------------------------------------------------------------------------------------- LearnedGaussian
@pytest.mark.parametrize("out_shape, y_shape", [((6, 9, 1), (9, 1)), ((9, 3), (9, 3)), ((4, 9), (9,))])
def test_learned_gaussian_matches_torch_normal_and_trains_log_sigma(out_shape, y_shape):
    g = torch.Generator().manual_seed(4)
    outputs = torch.randn(out_shape, generator=g, dtype=F64)
    y = torch.randn(y_shape, generator=g, dtype=F64)
    lik = LearnedGaussian(init_sigma=0.7).double()
    sigma = lik.log_sigma.detach().exp()  # 0.7 up to the float32 rounding of log 0.7
    assert float(sigma) == pytest.approx(0.7, rel=1e-6)
    lp = lik.log_prob(outputs, y)
    per_dim = Normal(outputs, sigma).log_prob(y.expand(out_shape))
    n_out = len(y_shape) - 1
    expected = per_dim.sum(dim=tuple(range(-n_out, 0))) if n_out else per_dim
    torch.testing.assert_close(lp, expected, rtol=1e-12, atol=1e-12)
    lp.sum().backward()
    # d/d log σ of Σ [-(y - f)^2 / (2 σ^2) - log σ] = Σ [(y - f)^2 / σ^2 - 1]
    want = (((y - outputs) / sigma) ** 2 - 1).sum()
    torch.testing.assert_close(lik.log_sigma.grad, want)
    with pytest.raises(ValueError, match="do not match outputs"):
        lik.log_prob(outputs, torch.randn(8, 1, dtype=F64))


def test_learned_gaussian_is_a_module_with_one_parameter():
    lik = LearnedGaussian(2.0)
    assert [n for n, _ in lik.named_parameters()] == ["log_sigma"]
    assert lik.sigma == pytest.approx(2.0) and "sigma=2" in repr(lik)
    mean, var = lik.mean_and_variance(torch.zeros(3, 5, 1))
    torch.testing.assert_close(var, torch.full((3, 5, 1), 4.0))


def test_regression_flags_and_predictives():
    assert Categorical.is_regression is False
    assert Gaussian(1.0).is_regression and LearnedGaussian().is_regression and Heteroscedastic().is_regression
    pred = Gaussian(3.0).predictive(torch.zeros(2, 4, 1))
    torch.testing.assert_close(pred.aleatoric_var, torch.full((4, 1), 9.0))
    het = Heteroscedastic(min_variance=0.0).predictive(torch.tensor([[[1.0, 0.0]], [[3.0, math.log(9.0)]]]))
    torch.testing.assert_close(het.mean, torch.tensor([[2.0]]))
    torch.testing.assert_close(het.aleatoric_var, torch.tensor([[5.0]]))
    torch.testing.assert_close(het.epistemic_var, torch.tensor([[1.0]]))
    probs = Categorical().predictive(torch.zeros(2, 3, 4)).sample_probs
    torch.testing.assert_close(probs, torch.full((2, 3, 4), 0.25))


def test_heteroscedastic_rejects_bad_floor():
    with pytest.raises(ValueError, match="min_variance must be finite and >= 0"):
        Heteroscedastic(-1.0)
