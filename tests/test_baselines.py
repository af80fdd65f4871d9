"""The paper's baselines behind the method protocol: MC-Dropout, deep ensembles, Bayes by Backprop, and the
adversarial KL estimator; each trains, each is (or is not) stochastic as it should be, and BbB/BbH recover
a known posterior."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TinyConvNet, make_blobs
from torch import nn

import bbh
from bbh.data import MemberBatches
from bbh.kl.adversarial import AdversarialKL


def blob_mlp() -> nn.Module:
    return bbh.models.MLP(2, 4, hidden=(32,))




def accuracy(method: bbh.Method, x: torch.Tensor, y: torch.Tensor, n: int = 20) -> float:
    with torch.no_grad():
        probs = method.sample_outputs(x, n).softmax(-1).mean(0)
    return float((probs.argmax(-1) == y).float().mean())


CASES = {
    "map": dict(),
    "mc-dropout": dict(sites=["net.1"]),  # after the hidden ReLU of the MLP
    "ensemble": dict(members=4),
    "ensemble-plain": dict(members=3, adversarial=False),
    "bbb": dict(init_log_var=-6.0),
    "bbb-local": dict(init_log_var=-6.0, estimator="local"),
    "bbh": dict(hidden=(8, 16)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_method_beats_chance_on_blobs(case):
    x, y = make_blobs(n=256, classes=4)
    name = case.split("-")[0] if case.startswith(("ensemble", "bbb")) else case
    method = bbh.create(name, blob_mlp(), **CASES[case])
    lr = 1e-3 if name == "bbh" else 1e-2
    bbh.Trainer(method, lr=lr, steps=150, progress=False, seed=0).fit((x, y))
    assert accuracy(method, x, y) > 0.9  # chance is 0.25


@pytest.mark.parametrize("name, options, stochastic", [
    ("map", {}, False), ("ensemble", {"members": 3}, False), ("mc-dropout", {}, True), ("bbb", {}, True),
    ("bbh", {"hidden": (8,)}, True)])
def test_repeated_predictions_differ_only_for_stochastic_methods(name, options, stochastic):
    method = bbh.create(name, TinyConvNet(), **options)
    method.eval()  # MC-Dropout keeps its dropout at test time
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        a, b = method.sample_outputs(x, 2), method.sample_outputs(x, 2)
    assert (not torch.allclose(a, b)) == stochastic
    if stochastic:
        assert not torch.allclose(a[0], a[1])  # and the samples within one call differ too


# ---- MC-Dropout -------------------------------------------------------------------------------------------
def test_mc_dropout_uses_lenets_declared_sites_and_the_authors_rate():
    model = bbh.models.LeNet5()
    x = torch.rand(8, 1, 28, 28)
    seen = []
    model.drop3.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    model(x)
    method = bbh.create("mc-dropout", model)
    assert method.sites == ["drop1", "drop2", "drop3"] and method.rate == 0.5
    method.eval()
    model(x)  # hooks run in registration order: the recorder above still sees the pre-dropout output,
    before = seen[-1]
    after = method.model.drop3(before)  # and calling the site module applies the dropout hook
    zero_before = float((before == 0).float().mean())
    zero_after = float((after == 0).float().mean())
    # half of the non-zero units are dropped, also in eval mode (4,000 units: sampling error ~0.01)
    assert abs(zero_after - (zero_before + 0.5 * (1 - zero_before))) < 0.04
    assert method.sample_outputs(x, 3).shape == (3, 8, 10)


def test_mc_dropout_drops_half_and_rescales():
    model = nn.Sequential(nn.Identity())
    method = bbh.create("mc-dropout", model, sites=["0"], prior_scale=None)
    out = method.model(torch.ones(200_000))
    kept = out != 0
    assert abs(float(kept.float().mean()) - 0.5) < 0.01
    assert torch.all(out[kept] == 2.0)  # inverted dropout: kept units scaled by 1 / (1 - rate)


def test_mc_dropout_errors():
    with pytest.raises(ValueError, match="declares no dropout sites"):
        bbh.create("mc-dropout", blob_mlp())
    with pytest.raises(ValueError, match="not modules"):
        bbh.create("mc-dropout", blob_mlp(), sites=["nope"])
    with pytest.raises(ValueError, match="rate"):
        bbh.create("mc-dropout", bbh.models.LeNet5(), rate=1.0)


# ---- deep ensembles ---------------------------------------------------------------------------------------
def test_ensemble_members_are_independent_copies_and_vectorised_equals_loop():
    torch.manual_seed(1)
    vec = bbh.create("ensemble", blob_mlp(), members=3, seed=7, vectorize=True)
    loop = bbh.create("ensemble", blob_mlp(), members=3, seed=7, vectorize=False)
    x = torch.randn(6, 2)
    assert vec._use_vmap(x) and not loop._use_vmap(x)
    assert not bbh.create("ensemble", blob_mlp(), members=2)._use_vmap(x)  # "auto" loops on the CPU
    w = [m.net[0].weight for m in vec.members]
    assert not torch.allclose(w[0], w[1])
    for a, b in zip(vec.members.parameters(), loop.members.parameters()):
        assert torch.equal(a, b)  # same seeds, same members
    torch.testing.assert_close(vec.sample_outputs(x), loop.sample_outputs(x))
    assert vec.sample_outputs(x).shape == (3, 6, 4)
    assert not any(p.requires_grad for p in vec.model.parameters())  # the template is not trained


def test_ensemble_loss_gives_each_member_its_own_gradient():
    ens = bbh.create("ensemble", blob_mlp(), members=2, adversarial=False, seed=0)
    x, y = make_blobs(n=32)
    ens.loss(x, y, num_data=32).total.backward()
    for member in ens.members:
        ref = [p.detach().clone().requires_grad_() for p in member.parameters()]
        out = torch.func.functional_call(member, dict(zip([n for n, _ in member.named_parameters()], ref)), (x,))
        torch.nn.functional.cross_entropy(out, y).backward()
        for p, r in zip(member.parameters(), ref):
            torch.testing.assert_close(p.grad, r.grad)


def test_ensemble_adversarial_loss_matches_its_definition():
    ens = bbh.create("ensemble", blob_mlp(), members=1, alpha=0.5, epsilon=0.1, seed=0)
    x, y = make_blobs(n=16)
    terms = ens.loss(x, y, num_data=16)
    member = ens.members[0]
    xg = x.clone().requires_grad_()
    ce = torch.nn.functional.cross_entropy(member(xg), y)
    (g,) = torch.autograd.grad(ce, xg)
    adv = torch.nn.functional.cross_entropy(member(x + 0.1 * g.sign()), y)
    torch.testing.assert_close(terms.total, 0.5 * ce + 0.5 * adv)
    assert terms.extras["nll_adv"] > float(ce.detach())  # FGSM raises the loss


def test_ensemble_with_member_batches_trains():
    x, y = make_blobs(n=256)
    ens = bbh.create("ensemble", blob_mlp(), members=3, member_batches=True, seed=0)
    data = MemberBatches(x, y, members=3, batch_size=32, seed=0)
    xb, yb = next(iter(data))
    assert xb.shape == (3, 32, 2) and yb.shape == (3, 32)
    assert not torch.equal(xb[0], xb[1])  # each member its own order
    bbh.Trainer(ens, lr=1e-2, epochs=6, progress=False, seed=0).fit(data)
    assert accuracy(ens, x, y) > 0.9
    with pytest.raises(ValueError, match="leading member dimension"):
        ens.loss(x[:8], y[:8], num_data=256)


def test_member_batches_cover_every_example_once_per_epoch_per_member():
    x = torch.arange(20.0).unsqueeze(1)
    data = MemberBatches(x, torch.arange(20), members=2, batch_size=5, seed=3)
    seen = torch.cat([xb for xb, _ in data], dim=1)  # [2, 20, 1]
    for k in range(2):
        assert sorted(seen[k, :, 0].tolist()) == list(range(20))
    assert len(data) == 4


def test_ensemble_with_batchnorm_falls_back_to_a_loop():
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    ens = bbh.create("ensemble", model, members=2)
    assert not ens.vectorizable
    with pytest.raises(ValueError, match="buffers"):
        bbh.create("ensemble", model, members=2, vectorize=True)
    x, y = make_blobs(n=64)
    bbh.Trainer(ens, lr=1e-2, steps=3, progress=False).fit((x, y))


# ---- Bayes by Backprop ------------------------------------------------------------------------------------
def test_bbb_init_kl_and_errors():
    model = blob_mlp()
    init = [p.detach().clone() for p in model.parameters()]
    bbb = bbh.create("bbb", model)
    for mu, p0 in zip(bbb.mu, init):
        assert torch.equal(mu, p0)  # means start at the model's own init
    lv = torch.cat([v.detach().flatten() for v in bbb.log_var])
    assert abs(float(lv.mean()) + 9) < 0.01 and float((lv + 9).abs().max()) <= 0.1 + 1e-6  # TruncN(-9, 0.05)
    # the analytic KL equals its formula
    sd = [torch.exp(0.5 * v) for v in bbb.log_var]
    expected = sum((-torch.log(s) + (s**2 + m**2) / 2 - 0.5).sum() for m, s in zip(bbb.mu, sd))
    torch.testing.assert_close(bbb.analytic_kl(), expected)
    with pytest.raises(ValueError, match="estimator"):
        bbh.create("bbb", blob_mlp(), estimator="flipout")
    with pytest.raises(ValueError, match="Linear/Conv"):
        bbh.create("bbb", nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3)), params=["*"], estimator="local")


def test_bbb_local_reparameterisation_has_the_right_output_moments():
    torch.manual_seed(0)
    lin = nn.Linear(3, 1)
    bbb = bbh.create("bbb", lin, likelihood=bbh.likelihoods.Gaussian(1.0), init_log_var=math.log(0.04),
                     estimator="local")
    x = torch.tensor([[1.0, -2.0, 0.5]]).expand(20_000, 3)
    bbb._local_active = True
    with torch.no_grad():
        out = bbh.functional.forward_with(bbb.model, dict(zip(bbb.param_names, bbb.mu)), x)
    bbb._local_active = False
    var_w, var_b = torch.exp(bbb.log_var[0].detach()), torch.exp(bbb.log_var[1].detach())
    expected_var = float((x[0] ** 2 * var_w).sum() + var_b)
    expected_mean = float(lin(x[:1]).detach())
    assert abs(float(out.mean()) - expected_mean) < 4 * math.sqrt(expected_var / 20_000)
    assert abs(float(out.var()) / expected_var - 1) < 0.05  # sampling error of a variance over 20k draws ~1 %


def orthogonal_regression(n: int = 64, d: int = 4, sigma: float = 1.0, s: float = 1.0):
    """y = X w + N(0, sigma^2) with X^T X = n I (a +-1 Hadamard design) and prior N(0, s^2 I).

    The posterior is Gaussian with diagonal covariance: Var = 1 / (n / sigma^2 + 1 / s^2) per weight and
    mean = Var * X^T y / sigma^2, so mean-field families can represent it exactly.
    """
    h = torch.tensor([[1.0]])
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    x = h[:, 1:d + 1].clone()  # orthogonal +-1 columns
    g = torch.Generator().manual_seed(0)
    w_true = torch.tensor([1.0, -0.5, 0.25, 2.0])[:d]
    y = x @ w_true + sigma * torch.randn(n, generator=g)
    var = 1.0 / (n / sigma**2 + 1.0 / s**2)
    mean = var * (x.t() @ y) / sigma**2
    return x, y.unsqueeze(1), mean, math.sqrt(var)


def test_bbb_recovers_the_exact_posterior_of_bayesian_linear_regression():
    x, y, mean, std = orthogonal_regression()
    torch.manual_seed(0)
    bbb = bbh.create("bbb", nn.Linear(4, 1, bias=False), likelihood=bbh.likelihoods.Gaussian(1.0),
                     init_log_var=-4.0, estimator="local")
    bbh.Trainer(bbb, lr=0.01, steps=3000, progress=False, seed=0).fit((x, y))
    mu, sd = bbb.mu[0].detach().flatten(), bbb.std()[0].detach().flatten()
    # posterior std 0.124; the optimum of the ELBO is the exact posterior; stochastic-gradient noise
    # leaves the means ~1e-2 and the stds a few % off after 3000 steps (measured), so 0.25 std and 15 %
    assert torch.all((mu - mean).abs() < 0.25 * std), (mu, mean)
    assert torch.all((sd / std - 1).abs() < 0.15), (sd, std)


def test_the_per_weight_nn_kl_recovers_the_exact_posterior_where_the_optimiser_converges():
    """Paper Eq. 2 per weight (n = m = 5) is unbiased enough to find the exact posterior: a Gaussian q (BbB) whose
    KL is that estimator reaches the exact stds within 20 % after 20,000 Adam steps at lr 1e-3.

    Measured (seeds 0-3, plain torch Adam): stds 0.97-1.05x the exact ones, means within 0.26 posterior std; a
    posterior stuck at the prior (8x too wide), a collapsed one or an estimator off by a factor fails.
    """
    x, y, mean, std = orthogonal_regression()
    torch.manual_seed(0)
    bbb = bbh.create("bbb", nn.Linear(4, 1, bias=False), likelihood=bbh.likelihoods.Gaussian(1.0),
                     init_log_var=-4.0, kl="nn-per-weight")
    opt = torch.optim.Adam(bbb.trainable_parameters(), lr=1e-3)
    for _ in range(20_000):
        opt.zero_grad(set_to_none=True)
        bbb.loss(x, y, num_data=64).total.backward()
        opt.step()
    mu, sd = bbb.mu[0].detach().flatten(), bbb.std()[0].detach().flatten()
    assert torch.all((mu - mean).abs() < 0.5 * std), ((mu - mean) / std)
    assert torch.all((sd / std - 1).abs() < 0.2), sd / std


@pytest.mark.parametrize("kl, lr, mean_tol, lowest, widest", [("nn-full", 3e-3, 1.0, 0.7, 1.5),
                                                              ("nn-per-weight", 1e-3, 2.5, 0.7, 3.5)])
def test_bbh_recovers_the_posterior_of_bayesian_linear_regression(kl, lr, mean_tol, lowest, widest):
    """BbH on the same problem, 3,000 steps. Measured over seeds 0-3: the last iterate's means wander by up to
    0.54 posterior std with either estimator. With the full-vector NN-KL (d = 4) the stds are 0.79-1.35x the
    exact ones: a test of the posterior. With the per-weight NN-KL the hypernet's stds come out 1.2-3.1x too
    wide and its means wander up to 1.86 std (2 threads): the estimator itself is not the cause (the test
    above recovers the exact stds with it), but its 1/distance gradient spikes under Adam move the hypernet's
    shared weights coherently. That case only checks that the posterior neither collapses (std -> 0) nor
    stays at the prior (8x too wide); closing the gap is the UCI/HMC issue's work."""
    x, y, mean, std = orthogonal_regression()
    torch.manual_seed(0)
    method = bbh.create("bbh", nn.Linear(4, 1, bias=False), likelihood=bbh.likelihoods.Gaussian(1.0),
                        hidden=(16, 32), noise_dim=4, likelihood_samples="average", kl=kl)
    bbh.Trainer(method, lr=lr, steps=3000, progress=False, seed=0).fit((x, y))
    with torch.no_grad():
        w = method.sample(4000)["weight"].flatten(1)
    assert torch.all((w.mean(0) - mean).abs() < mean_tol * std), (w.mean(0), mean)
    ratio = w.std(0) / std
    assert torch.all((ratio > lowest) & (ratio < widest)), ratio


# ---- adversarial KL ---------------------------------------------------------------------------------------
def test_adversarial_kl_estimates_a_gaussian_kl():
    torch.manual_seed(0)
    q = {"w": 0.5 + 0.5 * torch.randn(5, 2000)}
    est = AdversarialKL(hidden=(32, 32), pretrain_steps=400, lr=1e-2)
    value = float(est(q, bbh.NormalPrior(1.0)))
    per_weight = math.log(1 / 0.5) + (0.25 + 0.25) / 2 - 0.5  # KL(N(0.5, 0.5^2) || N(0, 1)) = 0.443
    # a discriminator trained on 10k scalars estimates log q/p up to ~10-20 % (measured over seeds)
    assert abs(value / 2000 - per_weight) < 0.3 * per_weight, value / 2000
    assert est.pretrained and est.update(q, bbh.NormalPrior(1.0))["disc_loss"] > 0


def test_adversarial_kl_trains_bbb_and_updates_after_each_step():
    x, y = make_blobs(n=256)
    bbb = bbh.create("bbb", blob_mlp(), init_log_var=-6.0, kl=AdversarialKL(pretrain_steps=5, max_weights=4096))
    trainer = bbh.Trainer(bbb, lr=1e-2, steps=100, progress=False, seed=0)
    disc_before = [p.detach().clone() for p in bbb.kl_estimator.parameters()]
    history = trainer.fit((x, y))
    assert "disc_loss" in history[-1]
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, bbb.kl_estimator.parameters()))
    ids = {id(p) for p in trainer.optimizer.param_groups[0]["params"]}
    assert not any(id(p) in ids for p in bbb.kl_estimator.parameters())  # not in the main optimizer
    assert accuracy(bbb, x, y) > 0.9


def test_adversarial_kl_by_name_in_bbh():
    method = bbh.create("bbh", blob_mlp(), hidden=(8,), kl="adversarial")
    assert isinstance(method.kl_estimator, AdversarialKL)
    x, y = make_blobs(n=64)
    bbh.Trainer(method, steps=2, progress=False).fit((x, y))
