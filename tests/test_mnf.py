"""Multiplicative Normalizing Flows: flows, KL terms, module surgery, training, factory and errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_blobs
from torch import nn

import bbh
from bbh.posteriors.mnf import MNF, MaskedRealNVP, MNFConv2d, MNFLinear, PlanarFlow


class TinyConvNet(nn.Module):
    """conv 3x3 (pad 1) -> ReLU -> conv 3x3 stride 2 -> ReLU -> BatchNorm -> flatten -> dense."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 3 * 3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.flatten(self.bn(x), 1))


def make_images(n: int = 256, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 one-channel images: a fixed random pattern per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 1, 8, 8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return patterns[y] + 0.5 * torch.randn(n, 1, 8, 8, generator=g), y


def accuracy(method: MNF, x: torch.Tensor, y: torch.Tensor, samples: int = 10) -> float:
    with torch.no_grad():
        probs = method.sample_outputs(x, samples).softmax(-1).mean(0)
    return float((probs.argmax(-1) == y).float().mean())


def perturb_(module: nn.Module, scale: float = 0.3) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


# ---------------------------------------------------------------------------------------------------- flows
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_masked_realnvp_logdet_matches_autograd(dim):
    flow = MaskedRealNVP(dim, hidden=7, n_flows=2).double()
    perturb_(flow)
    masks = [torch.tensor([[float(i % 2)] for i in range(dim)]).t().double(),
             torch.tensor([[float((i + 1) % 2)] for i in range(dim)]).t().double()]
    z = torch.randn(1, dim, dtype=torch.float64)
    _, logdet = flow(z, masks)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v.unsqueeze(0), masks)[0][0], z[0])
    assert torch.allclose(logdet[0], torch.linalg.slogdet(jac)[1], atol=1e-10)
    assert logdet[0] < 0  # gates in (0, 1) contract the unmasked coordinates


def test_masked_realnvp_masks_are_resampled_at_every_call():
    flow = MaskedRealNVP(6, hidden=5)
    z = torch.randn(64, 6)
    torch.manual_seed(1)
    a, _ = flow(z)
    b, _ = flow(z)
    assert not torch.allclose(a, b)
    # per-example logdets: each row its own masks, all of them finite
    _, logdet = flow(z)
    assert logdet.shape == (64,) and torch.isfinite(logdet).all() and logdet.unique().numel() > 1


@pytest.mark.parametrize("dim", [1, 3])
def test_planar_flow_logdet_matches_autograd(dim):
    flow = PlanarFlow(dim, n_flows=2).double()
    perturb_(flow, 0.8)
    for z in torch.randn(4, dim, dtype=torch.float64):
        _, logdet = flow(z.unsqueeze(0))
        jac = torch.autograd.functional.jacobian(lambda v: flow(v.unsqueeze(0))[0][0], z)
        assert torch.allclose(logdet[0], torch.linalg.slogdet(jac)[1], atol=1e-10)


# ---------------------------------------------------------------------------------------------------- layers
def test_surgery_replaces_linear_and_conv_keeping_hyperparameters_and_values():
    model = TinyConvNet()
    c1_w, fc_b = model.c1.weight.detach().clone(), model.fc.bias.detach().clone()
    old_ids = {id(p) for m in (model.c1, model.c2, model.fc) for p in m.parameters()}
    method = bbh.create("mnf", model)
    assert isinstance(model.c1, MNFConv2d) and isinstance(model.c2, MNFConv2d) and isinstance(model.fc, MNFLinear)
    assert isinstance(model.bn, nn.BatchNorm2d)  # other layers stay point estimates
    assert (model.c1.padding, model.c2.stride) == ((1, 1), (2, 2))
    assert torch.equal(model.c1.weight_mu, c1_w) and torch.equal(model.fc.bias_mu, fc_b)
    assert method.layer_names == ["c1", "c2", "fc"]
    trainable = method.trainable_parameters()
    assert not old_ids & {id(p) for p in trainable}  # nothing stale from the replaced layers
    assert {id(p) for p in trainable} == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.bn.parameters()} <= {id(p) for p in trainable}
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 4)
    # the first dense layer of the toy (one input) uses planar flows
    toy = bbh.create("mnf", bbh.models.MLP(1, 1, hidden=(100,)))
    assert isinstance(toy.model.net[0].flow_q, PlanarFlow) and isinstance(toy.model.net[2].flow_q, MaskedRealNVP)
    assert toy.model(torch.randn(5, 1)).shape == (5, 1)


def test_layers_filter_and_shared_layers():
    model = TinyConvNet()
    method = bbh.create("mnf", model, layers=["fc"])
    assert method.layer_names == ["fc"] and isinstance(model.c1, nn.Conv2d) and isinstance(model.fc, MNFLinear)
    shared = nn.Linear(3, 3)
    seq = nn.Sequential(shared, nn.Tanh(), shared)
    bbh.create("mnf", seq)
    assert isinstance(seq[0], MNFLinear) and seq[0] is seq[2]


def test_forward_std_is_clipped_at_thres_var_and_bias_variance_at_its_square():
    layer = bbh.create("mnf", nn.Sequential(nn.Linear(4, 3)), thres_var=0.3).model[0]
    with torch.no_grad():
        layer.weight_log_std.fill_(2.0)
        layer.bias_log_var.fill_(2.0)
    assert torch.allclose(layer.clipped_std(), torch.full((3, 4), 0.3))
    assert torch.allclose(layer.clipped_bias_var(), torch.full((3,), 0.09))
    # with a zero input only the bias noise remains: output std = 0.3
    with torch.no_grad():
        out = layer(torch.zeros(20000, 4)) - layer.bias_mu
    assert abs(float(out.std()) - 0.3) < 0.01


def test_kl_terms_are_finite_and_grow_with_the_weight_means():
    model = TinyConvNet()
    method = bbh.create("mnf", model)
    for name, layer in method.mnf_layers().items():
        torch.manual_seed(5)
        small = layer.kl()
        assert torch.isfinite(small), name
        # every weight contributes ~ -log sigma = 9 nats at the initial sigma = e^-9
        assert small > 8 * layer.weight_mu.numel(), name
        with torch.no_grad():
            layer.weight_mu.mul_(30.0)
        torch.manual_seed(5)
        assert layer.kl() > small, name
    kl = method.kl()
    assert torch.isfinite(kl) and kl > 0
    kl.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for n, p in model.named_parameters() if not n.startswith("bn."))


def test_weight_kl_matches_the_closed_form_gaussian_kl():
    layer = bbh.create("mnf", nn.Sequential(nn.Linear(3, 2)), prior_log_var=0.5).model[0]
    m, log_std = torch.randn(2, 3), torch.randn(2, 3) * 0.3
    p = torch.distributions
    expected = p.kl_divergence(p.Normal(m, log_std.exp()), p.Normal(0.0, math.exp(0.25))).sum()
    assert torch.allclose(layer._gauss_kl(m, log_std, layer.prior_log_var), expected, atol=1e-5)


def test_kl_layers_dense_leaves_conv_layers_out():
    model = TinyConvNet()
    method = bbh.create("mnf", model)
    assert method.kl_layer_names == ["c1", "c2", "fc"]
    torch.manual_seed(7)
    total = method.kl()
    torch.manual_seed(7)
    parts = {n: layer.kl() for n, layer in method.mnf_layers().items()}
    assert torch.allclose(total, sum(parts.values()))
    dense = MNF(TinyConvNet(), kl_layers="dense")
    dense.load_state_dict(method.state_dict())
    assert dense.kl_layer_names == ["fc"]
    torch.manual_seed(7)
    only_fc = dense.kl()
    torch.manual_seed(7)
    assert torch.allclose(only_fc, dense.model.fc.kl())
    # the conv layers' KL is most of the total here (c1 + c2: 252 weights, fc: 216)
    assert float((total - only_fc).detach()) > 0.4 * float(total.detach())
    assert torch.allclose(total - only_fc, parts["c1"] + parts["c2"], rtol=0.05)


# ---------------------------------------------------------------------------------------------------- training
def test_trains_an_mlp_on_blobs_and_predictions_are_stochastic():
    x, y = make_blobs(512, classes=4)
    method = bbh.create("mnf", bbh.models.MLP(2, 4, hidden=(32,)))
    history = bbh.Trainer(method, optimizer="adam", steps=150, progress=False, device="cpu").fit((x, y))
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["nll"] < 0.5 * history[0]["nll"]
    assert accuracy(method, x, y) > 0.9  # chance: 0.25
    a, b = method.sample_outputs(x[:16], 3), method.sample_outputs(x[:16], 3)
    assert a.shape == (3, 16, 4)
    assert not torch.allclose(a, b) and not torch.allclose(a[0], a[1])


def test_trains_a_tiny_conv_net():
    x, y = make_images(256)
    method = bbh.create("mnf", TinyConvNet(), kl_layers="all")
    bbh.Trainer(method, optimizer="adam", steps=150, progress=False, device="cpu").fit((x, y))
    assert accuracy(method, x, y) > 0.8  # chance: 0.25
    method.eval()  # MNF stays stochastic in eval mode (the authors' 100 test passes)
    out = method.sample_outputs(x[:8], 2)
    assert not torch.allclose(out[0], out[1])


def test_authors_zero_z_init_also_trains():
    x, y = make_blobs(512, classes=4)
    method = bbh.create("mnf", bbh.models.MLP(2, 4, hidden=(32,)), z_init=0.0)
    assert abs(float(method.model.net[0].q0_mean.detach().mean())) < 0.05
    bbh.Trainer(method, optimizer="adam", steps=200, progress=False, device="cpu").fit((x, y))
    assert accuracy(method, x, y) > 0.8


def test_loss_terms_follow_the_elbo_scaling_and_state_dict_round_trips():
    x, y = make_blobs(32)
    method = bbh.create("mnf", bbh.models.MLP(2, 4, hidden=(8,)))
    terms = method.loss(x, y, num_data=1000, kl_weight=0.5)
    assert torch.allclose(terms.total, terms.nll + 0.5 * terms.kl / 1000)
    clone = bbh.create("mnf", bbh.models.MLP(2, 4, hidden=(8,)))
    clone.load_state_dict(method.state_dict())
    assert torch.equal(clone.model.net[0].weight_mu, method.model.net[0].weight_mu)
    assert float(clone.model.net[0].prior_log_var[0]) == 1.0  # the authors' fixed N(0, e) prior
    assert "mnf" in bbh.available_methods() and MNF.default_lr["adam"] == 1e-3


# ---------------------------------------------------------------------------------------------------- errors
def test_bad_options_raise_clear_errors():
    mlp = lambda: bbh.models.MLP(2, 4, hidden=(8,))  # noqa: E731
    with pytest.raises(ValueError, match=r"thres_var \(the clip on the weights. std\) must be a number > 0, got 0.0"):
        bbh.create("mnf", mlp(), thres_var=0.0)
    with pytest.raises(ValueError, match="unknown kl_layers 'conv'; expected one of 'all', 'dense'"):
        bbh.create("mnf", mlp(), kl_layers="conv")
    with pytest.raises(ValueError, match="unknown option.*'num_samples'.*valid options: .*thres_var"):
        bbh.create("mnf", mlp(), num_samples=5)
    with pytest.raises(ValueError, match="groups=1 only, got groups=2"):
        bbh.create("mnf", nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))
    with pytest.raises(ValueError, match="padding_mode='zeros' only"):
        bbh.create("mnf", nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")))
    with pytest.raises(ValueError, match="nn.Linear and nn.Conv2d layers only; '0' is a Conv1d"):
        bbh.create("mnf", nn.Sequential(nn.Conv1d(1, 2, 3)))
    with pytest.raises(ValueError, match="'fc9' matches no Linear/Conv layer.*c1, c2, fc"):
        bbh.create("mnf", TinyConvNet(), layers=["fc9"])
    with pytest.raises(ValueError, match="wrap it"):
        bbh.create("mnf", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="n_samples must be an int >= 1, got 0"):
        bbh.create("mnf", mlp()).sample_outputs(torch.zeros(1, 2), 0)
