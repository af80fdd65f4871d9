"""Bayes by Hypernet: layouts, parameter counts, batching, noise, initialisation, errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_blobs
from torch import nn

import bbh
from bbh.posteriors.hypernet import HypernetHead, _HeadLinear


def tiny_mlp() -> nn.Module:
    return bbh.models.MLP(2, 4, hidden=(16,))


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_lenet5_has_the_papers_parameter_count():
    assert count(bbh.models.LeNet5()) == 431_080 == 130 * 3316


def test_layerwise_lenet_hypernet_size_matches_the_authors():
    method = bbh.create("bbh", bbh.models.LeNet5(), layout="layerwise", noise_dim=1, init="glorot",
                        kl="nn-per-weight")   # the paper's: no Gaussian layer
    assert count(method.posterior) == 222_331_368  # docs/protocol.md §2.1
    assert [t.numel for t in method.hypernet.targets] == [500, 20, 25_000, 50, 400_000, 500, 5_000, 10]


def test_sliced_and_single_lenet_hypernet_sizes_match_the_authors():
    sliced = bbh.create("bbh", bbh.models.LeNet5(), layout="sliced", noise_dim=1, init="glorot", kl="nn-per-weight")
    assert count(sliced.posterior) == 2_457_957  # docs/protocol.md §2.3
    single = bbh.create("bbh", bbh.models.LeNet5(), layout="single", noise_dim=1, num_chunks=130, init="glorot",
                        kl="nn-per-weight")
    assert (single.hypernet.num_chunks, single.hypernet.chunk_size) == (130, 3316)
    assert count(single.posterior) == 1_857_780  # docs/protocol.md §2.2


@pytest.mark.parametrize("layout", ["layerwise", "sliced", "single"])
@pytest.mark.parametrize("noise", ["shared", "independent"])
def test_sample_shapes_and_one_batched_call_per_hypernet(layout, noise):
    model = bbh.models.LeNet5()
    method = bbh.create("bbh", model, layout=layout, noise=noise, hidden=(8, 16), noise_dim=3)
    calls = []
    for head in method.hypernet.heads:
        head.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    samples = method.sample(7)
    assert list(samples) == [n for n, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert samples[name].shape == (7, *p.shape)
    # every head runs exactly once for all 7 samples (no Python loop over samples)
    assert len(calls) == len(method.hypernet.heads)
    assert all(c % 7 == 0 for c in calls)


def test_shared_noise_is_one_draw_and_independent_noise_is_one_per_hypernet():
    shared = bbh.create("bbh", tiny_mlp(), noise="shared", hidden=(8,)).hypernet
    z = shared._noise(5, 4, torch.device("cpu"), torch.float32)
    assert z.shape == (4, 5, 1) and torch.equal(z[0], z[3])
    indep = bbh.create("bbh", tiny_mlp(), noise="independent", hidden=(8,)).hypernet
    z = indep._noise(5, 4, torch.device("cpu"), torch.float32)
    assert not torch.equal(z[0], z[3])


def test_zero_mean_noise_centres_z_over_samples():
    post = bbh.create("bbh", tiny_mlp(), zero_mean_noise=True, noise_dim=4, hidden=(8,)).hypernet
    z = post._noise(6, 3, torch.device("cpu"), torch.float32)
    assert torch.allclose(z.mean(dim=1), torch.zeros(3, 4), atol=1e-6)


def test_sliced_layout_slices_output_channels():
    model = bbh.models.LeNet5()
    method = bbh.create("bbh", model, layout="sliced", hidden=(8,), noise="shared")
    post = method.hypernet
    torch.manual_seed(3)
    samples = post.sample(2)
    torch.manual_seed(3)
    z = post._noise(2, len(post.targets), torch.device("cpu"), torch.float32)
    i = [t.name for t in post.targets].index("c2.weight")
    target = post.targets[i]
    assert target.slices == 50 and target.slice_size == 20 * 25
    onehot = torch.zeros(50)
    onehot[7] = 1.0  # output channel 7
    inp = torch.cat([z[i][1], onehot]).unsqueeze(0).unsqueeze(0)  # sample 1, channel 7
    expected = post.heads[i](post.trunks[i](inp)[0])
    assert torch.allclose(samples["c2.weight"][1, 7].reshape(-1), expected[0], atol=1e-6)


def test_single_layout_is_one_hypernet_over_chunks_of_the_flat_vector():
    model = tiny_mlp()
    total = count(model)
    method = bbh.create("bbh", model, layout="single", num_chunks=7, hidden=(8,))
    post = method.hypernet
    assert len(post.heads) == 1 and post.num_chunks == 7 and post.chunk_size == math.ceil(total / 7)
    flat = torch.cat([v.reshape(3, -1) for v in method.sample(3).values()], dim=1)
    assert flat.shape == (3, total)


def test_head_linear_gradients_match_autograd():
    h = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_HeadLinear.apply, (h, w, b))
    assert torch.allclose(_HeadLinear.apply(h, w, b), torch.nn.functional.linear(h, w, b))
    assert isinstance(HypernetHead(6, 9)(h.float().detach()), torch.Tensor)


def _rms_ratios(init: str) -> dict[str, float]:
    torch.manual_seed(0)
    model = bbh.models.LeNet5()
    reference = {n: float(p.detach().pow(2).mean().sqrt()) for n, p in model.named_parameters()}
    method = bbh.create("bbh", model, init=init, noise_dim=1)
    with torch.no_grad():
        samples = method.sample(64)
    return {n: float(s.pow(2).mean().sqrt()) / reference[n] for n, s in samples.items()}


def test_hyperfan_init_starts_at_the_models_init_scale_and_glorot_far_below():
    hyper = _rms_ratios("hyperfan")
    # hyperfan matches the RMS of 32 draws exactly; these are 64 fresh draws, hence the tolerance
    assert all(0.85 < r < 1.15 for r in hyper.values()), hyper
    glorot = _rms_ratios("glorot")
    # the authors' init generates kernels 1.4x (fc2) to 8.6x (fc1) smaller than PyTorch's default
    assert glorot["fc1.weight"] < 1 / 4 and glorot["fc2.weight"] < 1 / 1.2, glorot


def _train_nll(method: bbh.Method, x, y, steps: int, lr: float = 1e-3) -> float:
    trainer = bbh.Trainer(method, lr=lr, steps=steps, kl_anneal=0.0, progress=False, device="cpu")
    hist = trainer.fit((x, y))
    return hist[-1]["nll"]


def test_default_bbh_trains_about_as_fast_as_map_from_the_first_steps():
    """With the principled init, BbH's likelihood falls like MAP's from the first steps (same optimizer,
    same learning rate). KL weight 0, as in the paper's annealing before its ramp (the first 5 epochs).
    The authors' init is shown to start far below the model's scale in the test above."""
    x, y = make_blobs(n=512, classes=4, dim=8, seed=1, spread=1.0)
    chance = math.log(4)
    torch.manual_seed(0)
    nll_map = _train_nll(bbh.create("map", bbh.models.MLP(8, 4, hidden=(64, 64))), x, y, steps=40)
    torch.manual_seed(0)
    nll_bbh = _train_nll(bbh.create("bbh", bbh.models.MLP(8, 4, hidden=(64, 64))), x, y, steps=40)
    assert nll_map < 0.5 * chance
    assert nll_bbh < 0.5 * chance and nll_bbh < 1.5 * nll_map + 0.05, (nll_bbh, nll_map)


@pytest.mark.parametrize("mode", ["one", "average", "mixture"])
def test_likelihood_sample_modes(mode, blobs):
    x, y = blobs
    method = bbh.create("bbh", tiny_mlp(), likelihood_samples=mode, hidden=(8,))
    terms = method.loss(x, y, num_data=256)
    assert torch.isfinite(terms.total) and terms.total.requires_grad
    terms.total.backward()
    assert all(p.grad is not None for p in method.posterior.parameters())


def test_mixture_likelihood_is_the_log_mean_exp_and_below_the_average_nll(blobs):
    """loss(likelihood_samples="mixture") is -mean_b log (1/S) Σ_s p(y_b | x_b, w_s) of the step's S samples, and
    by Jensen at most the "average" NLL of the same samples."""
    x, y = blobs
    method = bbh.create("bbh", tiny_mlp(), hidden=(8,), noise_dim=4, likelihood_samples="mixture")
    torch.manual_seed(3)
    mixture = method.loss(x, y, num_data=256).nll
    torch.manual_seed(3)
    samples = method.sample(5)  # the same draws the loss made
    loglik = method.likelihood.log_prob(bbh.functional.forward_samples(method.model, samples, x), y)
    expected = -(torch.logsumexp(loglik, 0) - math.log(5)).mean()
    assert torch.allclose(mixture, expected, atol=1e-6), (mixture, expected)
    method.likelihood_samples = bbh.LikelihoodSamples.AVERAGE
    torch.manual_seed(3)
    average = method.loss(x, y, num_data=256).nll
    assert torch.allclose(average, -loglik.mean(), atol=1e-6)
    assert mixture < average  # Jensen, strict for samples that disagree


def test_predictions_differ_between_calls_for_bbh_not_for_map(blobs):
    x, _ = blobs
    method = bbh.create("bbh", tiny_mlp(), hidden=(8,))
    a, b = method.sample_outputs(x, 3), method.sample_outputs(x, 3)
    assert a.shape == (3, 256, 4) and not torch.allclose(a, b)
    assert not torch.allclose(a[0], a[1])
    chunked = method.sample_outputs(x, 5, chunk_size=2)
    assert chunked.shape == (5, 256, 4)
    m = bbh.create("map", tiny_mlp())
    assert torch.equal(m.sample_outputs(x, 3), m.sample_outputs(x, 3))


def test_covered_parameters_are_frozen_and_others_stay_trainable():
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    method = bbh.create("bbh", model, hidden=(8,))
    assert method.param_names == ["0.weight", "0.bias", "3.weight", "3.bias"]
    trainable = {id(p) for p in method.trainable_parameters()}
    assert id(model[1].weight) in trainable and id(model[1].bias) in trainable
    assert id(model[0].weight) not in trainable
    only = bbh.create("bbh", nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)), params=["2.*"],
                      hidden=(8,))
    assert only.param_names == ["2.weight", "2.bias"]


def test_bad_options_fail_with_messages_that_list_the_valid_values():
    with pytest.raises(ValueError, match="'layerwise', 'sliced', 'single'"):
        bbh.create("bbh", tiny_mlp(), layout="columnwise")
    with pytest.raises(ValueError, match="'shared', 'independent'"):
        bbh.create("bbh", tiny_mlp(), noise="correlated")
    with pytest.raises(ValueError, match="'hyperfan', 'glorot'"):
        bbh.create("bbh", tiny_mlp(), init="he")
    with pytest.raises(ValueError, match="'one', 'average', 'mixture'"):
        bbh.create("bbh", tiny_mlp(), likelihood_samples="all")
    with pytest.raises(ValueError, match="unknown option.*'layers'.*valid options: .*layout"):
        bbh.create("bbh", tiny_mlp(), layers=3)
    with pytest.raises(ValueError, match="unknown method 'bayes'.*'bbh'.*'map'"):
        bbh.create("bayes", tiny_mlp())
    with pytest.raises(ValueError, match="'net.9.weight' does not exist.*net.0.weight"):
        bbh.create("bbh", tiny_mlp(), params=["net.9.weight"])
    with pytest.raises(ValueError, match="draws_per_step must be an int >= 2, got 1"):
        bbh.create("bbh", tiny_mlp(), draws_per_step=1)
    with pytest.raises(ValueError, match="noise_dim"):
        bbh.create("bbh", tiny_mlp(), noise_dim=0)
    with pytest.raises(ValueError, match="unknown kl 'kde'"):
        bbh.create("bbh", tiny_mlp(), kl="kde")


def test_wrong_shapes_fail_with_clear_messages():
    method = bbh.create("bbh", bbh.models.LeNet5(), hidden=(8,))
    with pytest.raises(ValueError, match=r"LeNet5 expects images \[B, 1, 28, 28\] or \[B, 784\], got \(4, 3, 32, 32\)"):
        method.loss(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long), num_data=10)
    with pytest.raises(ValueError, match=r"same batch dimensions \[B\]: x is \[4, 784\], y is \[5\]"):
        method.loss(torch.rand(4, 784), torch.zeros(5, dtype=torch.long), num_data=10)
    with pytest.raises(ValueError, match="num_data must be a positive int"):
        method.loss(torch.rand(4, 784), torch.zeros(4, dtype=torch.long), num_data=0)


@pytest.mark.parametrize("layout", ["layerwise", "chunked", "rank1", "rank1-mixture"])
def test_state_dict_round_trip_reproduces_samples(layout):
    extra = dict(mixture=3) if layout == "rank1-mixture" else {}  # its component means travel too
    layout = layout.split("-")[0]
    a = bbh.create("bbh", tiny_mlp(), hidden=(8,), layout=layout, chunk_size=16, **extra)
    b = bbh.create("bbh", tiny_mlp(), hidden=(8,), layout=layout, chunk_size=16, **extra)
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    b.load_state_dict(a.state_dict())
    torch.manual_seed(5)
    sa = a.sample(3)
    torch.manual_seed(5)
    sb = b.sample(3)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_any_object_with_sample_is_a_prior():
    """BbH only needs prior samples (paper Sec. 4): a Laplace prior given as a bare sampler works."""

    class LaplacePrior:
        def __init__(self):
            self.calls = 0

        def sample(self, shape, *, device=None, dtype=None):
            self.calls += 1
            return torch.distributions.Laplace(0.0, 1.0).sample(shape).to(device=device, dtype=dtype)

    prior = LaplacePrior()
    method = bbh.create("bbh", tiny_mlp(), prior=prior, hidden=(8,))
    x, y = make_blobs(n=32)
    terms = method.loss(x, y, num_data=32)
    assert prior.calls == 1 and torch.isfinite(terms.kl)
    with pytest.raises(TypeError, match="sample"):
        bbh.create("bbh", tiny_mlp(), prior="laplace")
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        bbh.create("bbh", tiny_mlp(), prior=-1.0)


@pytest.mark.parametrize("activation", ["leaky_relu", "relu", "tanh", "elu"])
def test_hidden_activation_is_an_option_and_hyperfan_still_matches_the_scale(activation):
    torch.manual_seed(0)
    model = tiny_mlp()
    method = bbh.create("bbh", model, activation=activation, hidden=(16, 32))
    assert method.hypernet.activation == activation
    ref = {n: float(p.detach().pow(2).mean().sqrt()) for n, p in model.named_parameters()}
    with torch.no_grad():
        samples = method.sample(32)
    for name, s in samples.items():
        assert 0.5 < float(s.pow(2).mean().sqrt()) / ref[name] < 2.0, (activation, name)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        bbh.create("bbh", tiny_mlp(), activation="gelu")


@pytest.mark.parametrize("layout", ["layerwise", "sliced", "single", "chunked", "rank1"])
@pytest.mark.parametrize("noise", ["shared", "independent"])
def test_every_layout_and_noise_trains_beyond_chance(layout, noise):
    x, y = make_blobs(n=256, classes=4, dim=2, seed=2, spread=0.7)
    torch.manual_seed(0)
    method = bbh.create("bbh", bbh.models.MLP(2, 4, hidden=(16,)), layout=layout, noise=noise,
                        hidden=(16, 32), num_chunks=5, chunk_size=24)
    bbh.Trainer(method, lr=3e-3, steps=80, kl_anneal=0.0, progress=False).fit((x, y))
    with torch.no_grad():
        acc = (method.sample_outputs(x, 20).softmax(-1).mean(0).argmax(-1) == y).float().mean()
    assert acc > 0.85, (layout, noise, float(acc))  # chance is 0.25


@pytest.mark.parametrize("layout", ["layerwise", "chunked"])
def test_init_spread_sets_the_draws_spread_and_keeps_their_scale(layout):
    # Without it the hyperfan init gives every weight about half its size as noise (0.5); init_spread=s scales
    # the noise inputs' first-layer weights until the spread over draws is s times the RMS.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    rms = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).pow(2).mean().sqrt())
    own = bbh.create("bbh", model, layout=layout, chunk_size=64, init_spread=None, kl="nn-per-weight")
    narrow = bbh.create("bbh", nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5)), layout=layout,
                        chunk_size=64, kl="nn-per-weight")   # the default init_spread, 0.05

    def spread_and_rms(method):
        with torch.no_grad():
            flat = torch.cat([v.reshape(200, -1) for v in method.weight_samples(200).values()], 1)
        return float(flat.std(0).pow(2).mean().sqrt() / flat.pow(2).mean().sqrt()), float(flat.pow(2).mean().sqrt())

    assert spread_and_rms(own)[0] > 0.2
    spread, out_rms = spread_and_rms(narrow)
    assert 0.03 < spread < 0.08
    assert out_rms == pytest.approx(rms, rel=0.3)
    with pytest.raises(ValueError, match="init_spread"):
        bbh.create("bbh", tiny_mlp(), init_spread=0.0)


def test_num_samples_is_the_deprecated_name_of_draws_per_step():
    """``num_samples`` meant draws per training step here and predictive draws elsewhere; the old keyword still
    works, with a DeprecationWarning, and so does the old attribute."""
    with pytest.warns(DeprecationWarning, match="renamed draws_per_step"):
        method = bbh.create("bbh", tiny_mlp(), num_samples=3)
    assert method.draws_per_step == 3
    with pytest.warns(DeprecationWarning, match="renamed draws_per_step"):
        assert method.num_samples == 3
