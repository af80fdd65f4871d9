"""Adversarial attacks (bbh.evaluation.attacks): FGSM as the authors ran it (mean of per-sample sign gradients), FGSM on
the expected loss, and PGD — checked against hand-computed gradients on tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyConvNet, make_blobs
from torch import nn

import bbh
from bbh.core.functional import forward_samples, forward_with
from bbh.evaluation.attacks import PAPER_EPSILONS, fgsm, per_sample_input_gradients, pgd
from bbh.posteriors.protocol import Method


def blob_mlp(hidden: int = 16) -> nn.Module:
    return bbh.models.MLP(2, 4, hidden=(hidden,))




@pytest.fixture(scope="module")
def trained_map():
    x, y = make_blobs(256, seed=1)
    torch.manual_seed(0)
    method = bbh.MAP(blob_mlp())
    bbh.Trainer(method, lr=1e-2, steps=300, progress=False, seed=0).fit((x, y))
    method.eval()
    return method, x[:64], y[:64]


def hand_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params=None) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    out = model(leaf) if params is None else forward_with(model, params, leaf)
    (g,) = torch.autograd.grad(F.cross_entropy(out, y), leaf)
    return g


def accuracy(method, x, y, n=10) -> float:
    with torch.no_grad():
        return float((method.sample_outputs(x, n).softmax(-1).mean(0).argmax(-1) == y).float().mean())


def mean_nll(method, x, y, n=10) -> float:
    with torch.no_grad():
        return float(-method.likelihood.log_prob(method.sample_outputs(x, n), y).mean())


class Bank:
    """Replaces ``method.sample`` by draws from a fixed bank of weight samples, handed out in order."""

    def __init__(self, method, n: int) -> None:
        with torch.no_grad():
            self.samples = {k: v.detach().clone() for k, v in method.sample(n).items()}
        self.n, self.pos = n, 0

    def __call__(self, n: int) -> dict[str, torch.Tensor]:
        out = {k: v[self.pos:self.pos + n] for k, v in self.samples.items()}
        self.pos += n
        assert self.pos <= self.n, "more samples asked than banked"
        return out

    def one(self, s: int) -> dict[str, torch.Tensor]:
        return {k: v[s] for k, v in self.samples.items()}


# ---------------------------------------------------------------------------------------------------- MAP
@pytest.mark.parametrize("gradient", ["authors", "expectation"])
def test_fgsm_map_is_x_plus_eps_sign_grad(trained_map, gradient):
    method, x, y = trained_map
    eps = 0.3
    expected = x + eps * hand_grad(method.model, x, y).sign()
    got = fgsm(method, x, y, eps, gradient=gradient)
    torch.testing.assert_close(got, expected)
    assert not got.requires_grad


def test_epsilon_zero_returns_x(trained_map):
    method, x, y = trained_map
    for gradient in ("authors", "expectation"):
        assert torch.equal(fgsm(method, x, y, 0.0, gradient=gradient), x)
    assert torch.equal(pgd(method, x, y, 0.0), x)


def test_accuracy_drops_as_epsilon_grows(trained_map):
    method, x, y = trained_map
    accs = [accuracy(method, fgsm(method, x, y, eps), y) for eps in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert accs[0] > 0.9
    assert all(b <= a + 1e-9 for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < accs[0] - 0.4, accs


def test_pgd_at_least_as_strong_as_fgsm():
    """On a 10-d problem PGD's mean loss is at least FGSM's (with and without random start). (On the 2-d
    blobs a random start can end in a worse corner of the box for single examples, as PGD may.)"""
    x, y = make_blobs(256, dim=10, seed=1, spread=1.0)
    torch.manual_seed(0)
    method = bbh.MAP(bbh.models.MLP(10, 4, hidden=(32,)))
    bbh.Trainer(method, lr=1e-2, steps=300, progress=False, seed=0).fit((x, y))
    method.eval()
    x, y = x[:64], y[:64]
    for eps in (0.5, 1.0):
        l_fgsm = mean_nll(method, fgsm(method, x, y, eps), y)
        for random_start in (True, False):
            x_pgd = pgd(method, x, y, eps, steps=20, random_start=random_start,
                        generator=torch.Generator().manual_seed(0))
            assert (x_pgd - x).abs().max() <= eps + 1e-6
            assert mean_nll(method, x_pgd, y) >= l_fgsm, (eps, random_start)
        assert mean_nll(method, x_pgd, y) > mean_nll(method, x, y)


def test_clamp_is_respected(trained_map):
    method, x, y = trained_map
    lo, hi = -1.0, 1.5
    for x_adv in (fgsm(method, x, y, 0.7, clamp=(lo, hi)),
                  fgsm(method, x, y, 0.7, clamp=(lo, hi), gradient="expectation"),
                  pgd(method, x, y, 0.7, clamp=(lo, hi))):
        assert x_adv.min() >= lo and x_adv.max() <= hi
    unclamped = fgsm(method, x, y, 0.7)
    assert unclamped.min() < lo or unclamped.max() > hi  # the clamp did something


def test_paper_epsilons():
    assert PAPER_EPSILONS == (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)


def test_argument_errors(trained_map):
    method, x, y = trained_map
    with pytest.raises(ValueError, match="gradient"):
        fgsm(method, x, y, 0.1, gradient="mean")
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(method, x, y, -0.1)
    with pytest.raises(ValueError, match="batch size"):
        fgsm(method, x, y[:3], 0.1)
    with pytest.raises(ValueError, match="clamp"):
        fgsm(method, x, y, 0.1, clamp=(1.0, 0.0))
    with pytest.raises(ValueError, match="steps"):
        pgd(method, x, y, 0.1, steps=0)


# ---------------------------------------------------------------------------------------------------- samplers
def make_sampler(kind: str):
    model = blob_mlp(8)
    if kind == "bbb":
        return bbh.create("bbb", model, init_log_var=-2.0)
    return bbh.create("bbh", model, hidden=(8, 8), init_spread=None)  # draws that differ enough to flip signs


@pytest.mark.parametrize("kind", ["bbb", "bbh"])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_authors_fgsm_is_mean_of_per_sample_signs(kind, chunk_size):
    method = make_sampler(kind)
    x, y = make_blobs(12, seed=2)
    S, eps = 7, 0.2
    bank = Bank(method, S)
    method.sample = bank  # fgsm draws its weights from the bank, in order
    got = fgsm(method, x, y, eps, n_samples=S, chunk_size=chunk_size)
    assert bank.pos == S
    signs = torch.stack([hand_grad(method.model, x, y, bank.one(s)).sign() for s in range(S)])
    torch.testing.assert_close(got, x + eps * signs.mean(0))
    # the samples really differ: the mean of the signs is not a single sign
    assert ((signs.mean(0).abs() < 1) & (signs.mean(0).abs() > 0)).any()


def test_authors_fgsm_with_seeded_bbb_samples():
    """Without patching: under a fixed seed, fgsm draws ``method.sample(S)`` once."""
    method = make_sampler("bbb")
    x, y = make_blobs(10, seed=3)
    S, eps = 5, 0.1
    torch.manual_seed(123)
    got = fgsm(method, x, y, eps, n_samples=S)
    torch.manual_seed(123)
    with torch.no_grad():
        w = method.sample(S)
    signs = torch.stack([hand_grad(method.model, x, y, {k: v[s] for k, v in w.items()}).sign() for s in range(S)])
    torch.testing.assert_close(got, x + eps * signs.mean(0))


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_expectation_fgsm_is_sign_of_expected_loss_gradient(chunk_size):
    method = make_sampler("bbb")
    x, y = make_blobs(12, seed=4)
    S, eps = 6, 0.2
    bank = Bank(method, S)
    method.sample = bank
    got = fgsm(method, x, y, eps, n_samples=S, gradient="expectation", chunk_size=chunk_size)
    leaf = x.clone().requires_grad_(True)
    out = forward_samples(method.model, bank.samples, leaf)  # [S, B, K]
    loss = torch.stack([F.cross_entropy(out[s], y) for s in range(S)]).mean()  # mean of per-sample CEs
    (g,) = torch.autograd.grad(loss, leaf)
    torch.testing.assert_close(got, x + eps * g.sign())


def test_authors_fgsm_mc_dropout_matches_recorded_masks():
    """Record the dropout masks the attack used (hooks around the site) and redo every sample by hand."""
    torch.manual_seed(0)
    model = blob_mlp(16)
    method = bbh.create("mc-dropout", model, sites=["net.1"])
    x, y = make_blobs(10, seed=5)
    S, eps = 6, 0.25
    site = model.net[1]
    record: dict[str, torch.Tensor] = {}
    h1 = site.register_forward_hook(lambda m, i, o: record.__setitem__("pre", o.detach().clone()), prepend=True)
    h2 = site.register_forward_hook(lambda m, i, o: record.__setitem__("post", o.detach().clone()))
    got = fgsm(method, x, y, eps, n_samples=S)
    h1.remove()
    h2.remove()
    pre, post = record["pre"].view(S, 10, -1), record["post"].view(S, 10, -1)
    # inverted dropout: post = pre * mask / (1 - rate); where pre == 0 the mask is irrelevant
    scale = torch.where(pre > 0, post / pre.clamp(min=1e-30), torch.zeros_like(pre))
    lin1, lin2 = model.net[0], model.net[2]
    signs = []
    for s in range(S):
        leaf = x.clone().requires_grad_(True)
        out = lin2(torch.relu(lin1(leaf)) * scale[s])
        (g,) = torch.autograd.grad(F.cross_entropy(out, y), leaf)
        signs.append(g.sign())
    signs = torch.stack(signs)
    torch.testing.assert_close(got, x + eps * signs.mean(0))
    assert not torch.equal(signs[0], signs.mean(0))  # the masks differ between samples


def test_ensemble_authors_and_expectation():
    ens = bbh.create("ensemble", blob_mlp(8), members=3, seed=0)
    x, y = make_blobs(12, seed=6)
    eps = 0.3
    grads = torch.stack([hand_grad(m, x, y) for m in ens.members])
    got = fgsm(ens, x, y, eps, n_samples=100)  # n_samples is ignored: one sample per member
    torch.testing.assert_close(got, x + eps * grads.sign().mean(0))
    got = fgsm(ens, x, y, eps, gradient="expectation")
    torch.testing.assert_close(got, x + eps * grads.mean(0).sign())
    assert per_sample_input_gradients(ens, x, y, 50).shape == (3, *x.shape)


class Wrapped(Method):
    """A method the attacks know nothing about: the generic loop over ``sample_outputs(x, 1)``."""

    def __init__(self, inner, bank) -> None:
        super().__init__(inner.model)
        self.bank = bank

    def sample_outputs(self, x, n_samples):
        return forward_samples(self.model, self.bank(int(n_samples)), x)


def test_authors_fgsm_generic_method_loop():
    inner = make_sampler("bbb")
    x, y = make_blobs(9, seed=7)
    S, eps = 5, 0.2
    bank = Bank(inner, S)
    method = Wrapped(inner, bank)
    got = fgsm(method, x, y, eps, n_samples=S)
    signs = torch.stack([hand_grad(method.model, x, y, bank.one(s)).sign() for s in range(S)])
    torch.testing.assert_close(got, x + eps * signs.mean(0))


# ---------------------------------------------------------------------------------------------------- all methods
METHODS = {
    "map": lambda m: bbh.create("map", m),
    "mc-dropout": lambda m: bbh.create("mc-dropout", m, sites=["drop"]),
    "ensemble": lambda m: bbh.create("ensemble", m, members=2, seed=0),
    "bbb": lambda m: bbh.create("bbb", m, init_log_var=-4.0),
    "bbh": lambda m: bbh.create("bbh", m, hidden=(8, 8)),
    "mnf": lambda m: bbh.create("mnf", m),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_images_any_shape_no_grad_left(name):
    model = TinyConvNet()
    method = METHODS[name](model)
    flags = {n: p.requires_grad for n, p in method.named_parameters()}
    x = torch.rand(5, 1, 8, 8)
    y = torch.randint(0, 4, (5,))
    S, eps = 4, 0.1
    for gradient in ("authors", "expectation"):
        x_adv = fgsm(method, x, y, eps, n_samples=S, gradient=gradient, clamp=(0.0, 1.0))
        assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
        assert (x_adv - x).abs().max() <= eps + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    steps = (fgsm(method, x, y, eps, n_samples=S) - x) / eps
    fixed = {"map": 1, "ensemble": 2}.get(name, S)
    assert torch.allclose(steps * fixed, (steps * fixed).round(), atol=1e-4)  # a mean of `fixed` signs
    x_adv = pgd(method, x, y, eps, steps=3, n_samples=2)
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= eps + 1e-6
    assert all(p.grad is None for p in method.parameters())
    assert {n: p.requires_grad for n, p in method.named_parameters()} == flags


def test_mode_is_left_alone(trained_map):
    method, x, y = trained_map
    method.train()
    try:
        fgsm(method, x, y, 0.1)
        assert method.training
    finally:
        method.eval()
