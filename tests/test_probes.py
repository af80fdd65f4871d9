"""MNIST probes (bbh.evaluation.probes: rotations, mixup) and posterior weight plots (bbh.reports.posterior_plots)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bbh
from bbh.evaluation.probes import (
    ANGLES_90,
    ANGLES_180,
    ANGLES_NEG_90,
    MIXUP_LAMBDAS,
    MIXUP_PROBES,
    ROTATION_PROBES,
    author_probes,
    mixup_probe,
    probe_records,
    rotate_images,
    rotation_probe,
)
from bbh.reports.posterior_plots import (
    gaussian_kde,
    plot_weight_correlation,
    plot_weight_marginals,
    plot_weight_std,
    weight_correlation,
    weight_samples,
    weight_std,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def images(n: int = 3, h: int = 28, w: int = 28, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, h, w, generator=g)


# ---------------------------------------------------------------------------------------------------- rotations
def test_rotation_by_zero_is_identity():
    x = images()
    out = rotate_images(x, [0.0])
    assert out.shape == (1, *x.shape)
    torch.testing.assert_close(out[0], x, atol=1e-7, rtol=0)


@pytest.mark.parametrize("size", [(28, 28), (7, 7), (6, 6)])
def test_rotation_by_90_is_rot90_counter_clockwise(size):
    x = images(2, *size)
    out = rotate_images(x, [90.0, -90.0, 180.0, 270.0])
    torch.testing.assert_close(out[0], torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], torch.rot90(x, -1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2], torch.rot90(x, 2, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[3], torch.rot90(x, 3, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_rotation_direction_on_a_marked_pixel():
    """The top-right pixel goes to the top-left under +90 (counter-clockwise as displayed, row 0 on top)."""
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 4] = 1.0
    out = rotate_images(x, [90.0])[0, 0, 0]
    assert out[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)


def test_four_quarter_turns_return_the_original():
    x = images(2)
    y = x
    for _ in range(4):
        y = rotate_images(y, [90.0])[0]
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate_images(x, [360.0])[0], x, atol=1e-5, rtol=0)


def test_rotation_non_square_and_zero_padding():
    x = torch.ones(1, 1, 6, 10)
    out = rotate_images(x, [90.0, 45.0])
    assert out.shape == (2, 1, 1, 6, 10)
    # a 6x10 field turned by 90 degrees: the corners of the 6x10 output fall outside the input -> 0
    assert out[0, 0, 0, 0, 0] == 0 and out[0, 0, 0, 3, 5] == pytest.approx(1.0)
    assert out.min() >= 0 and out.max() <= 1 + 1e-6


def test_rotation_agrees_with_scipy_order_1():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 6:22, 12:16] = 1.0  # a bar
    x[0, 0, 6:9, 12:22] = 1.0  # with a flag at the top
    for angle in (30.0, -50.0, 90.0, 135.0):
        ours = rotate_images(x, [angle])[0, 0, 0]
        ref = torch.from_numpy(ndimage.rotate(x[0, 0].numpy(), angle, reshape=False, order=1, mode="constant",
                                              cval=0.0))
        # bilinear interpolation vs scipy's order-1 spline: equal away from the border
        assert (ours - ref).abs()[2:-2, 2:-2].max() < 1e-4, angle


def test_rotate_images_input_checks():
    with pytest.raises(TypeError):
        rotate_images(torch.zeros(1, 1, 4, 4, dtype=torch.long), [0])
    with pytest.raises(ValueError):
        rotate_images(torch.zeros(1, 1, 1, 4, 4), [0])
    assert rotate_images(torch.rand(4, 4), 10.0).shape == (1, 1, 1, 4, 4)


def test_author_constants():
    assert ANGLES_90 == (0, 10, 20, 30, 40, 50, 60, 70, 80, 90)
    assert ANGLES_NEG_90[-1] == -90 and len(ANGLES_NEG_90) == 10
    assert len(ANGLES_180) == 19 and ANGLES_180[-1] == 180
    assert ROTATION_PROBES["rot_three"][0] == 270 and ROTATION_PROBES["rot_one"][0] == 202
    assert ROTATION_PROBES["rot_pos_six"] == (217, tuple(range(0, -181, -10)))
    assert MIXUP_PROBES == {"mixup_three_eight": (391, 270)}
    assert MIXUP_LAMBDAS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


# ---------------------------------------------------------------------------------------------------- probes
class TinyMNISTNet(nn.Module):
    dropout_sites = ("drop",)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 5, stride=4)
        self.drop = nn.Identity()
        self.fc = nn.Linear(2 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.drop(torch.relu(self.conv(x))), 1))


@pytest.mark.parametrize("name,S", [("map", 1), ("mc-dropout", 4), ("ensemble", 2)])
def test_probe_shapes(name, S):
    options = {"mc-dropout": dict(rate=0.5), "ensemble": dict(members=2, seed=0)}.get(name, {})
    method = bbh.create(name, TinyMNISTNet(), **options)
    img = images(1)[0]
    rot = rotation_probe(method, img, ANGLES_180, n_samples=4)
    A = len(ANGLES_180)
    assert rot["images"].shape == (A, 1, 28, 28)
    assert rot["probs"].shape == (A, S, 10)
    assert rot["mean_probs"].shape == (A, 10) and rot["entropy"].shape == (A,)
    torch.testing.assert_close(rot["probs"].sum(-1), torch.ones(A, S))
    torch.testing.assert_close(rot["mean_probs"], rot["probs"].mean(1))
    assert (rot["entropy"] >= 0).all() and (rot["entropy"] <= math.log(10) + 1e-5).all()
    torch.testing.assert_close(rot["images"][0], img, atol=1e-6, rtol=0)
    mix = mixup_probe(method, images(1, seed=1)[0], images(1, seed=2)[0], n_samples=4)
    assert mix["probs"].shape == (11, S, 10) and mix["images"].shape == (11, 1, 28, 28)
    rows = probe_records(mix)
    assert len(rows) == 11 * S * 10 and {"lambda", "sample", "class", "prob", "image"} <= set(rows[0])


def test_mixup_endpoints_are_the_images():
    a, b = images(1, seed=1)[0], images(1, seed=2)[0]
    method = bbh.create("map", TinyMNISTNet())
    mix = mixup_probe(method, a, b, n_samples=3)
    torch.testing.assert_close(mix["images"][-1], a)  # λ = 1 -> a
    torch.testing.assert_close(mix["images"][0], b)  # λ = 0 -> b
    torch.testing.assert_close(mix["images"][5], 0.5 * a + 0.5 * b)
    with pytest.raises(ValueError):
        mixup_probe(method, a, b[:, :10], n_samples=3)


def test_author_probes_on_fake_test_set():
    method = bbh.create("map", TinyMNISTNet())
    test = torch.rand(400, 784)
    out = author_probes(method, test, n_samples=2)
    assert set(out) == set(ROTATION_PROBES) | set(MIXUP_PROBES)
    assert out["rot_six"]["probs"].shape == (19, 1, 10)
    torch.testing.assert_close(out["rot_three"]["images"][0], test[270].view(1, 28, 28), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["mixup_three_eight"]["images"][-1], test[391].view(1, 28, 28))


# ---------------------------------------------------------------------------------------------------- weight samples
def mlp() -> nn.Module:
    return bbh.models.MLP(3, 4, hidden=(5,))  # 3*5 + 5 + 5*4 + 4 = 44 scalars, kernels 35


def test_weight_samples_bbh_and_bbb():
    torch.manual_seed(0)
    for method in (bbh.create("bbh", mlp(), hidden=(8, 8)), bbh.create("bbb", mlp(), init_log_var=-4.0)):
        w = weight_samples(method, 23, chunk_size=10)
        assert w.shape == (23, 44) and w.dtype == torch.float32
        assert (w.std(0) > 0).all()
    # BbB: the flat order is model order; the sample mean approaches mu
    bbb = bbh.create("bbb", mlp(), init_log_var=-8.0)
    w = weight_samples(bbb, 200)
    mu = torch.cat([m.detach().reshape(-1) for m in bbb.mu])
    torch.testing.assert_close(w.mean(0), mu, atol=0.01, rtol=0)
    assert torch.equal(mu[:15], bbb.mu[0].detach().reshape(-1))  # net.0.weight first


def test_weight_std_and_first_match_the_full_samples():
    bbb = bbh.create("bbb", mlp(), init_log_var=-3.0)
    torch.manual_seed(5)
    full = weight_samples(bbb, 57, chunk_size=10)
    torch.manual_seed(5)
    std = weight_std(bbb, 57, chunk_size=10)
    torch.testing.assert_close(std, full.std(0), atol=1e-6, rtol=1e-5)
    torch.manual_seed(5)
    torch.testing.assert_close(weight_samples(bbb, 57, first=9, chunk_size=10), full[:, :9])
    ens = bbh.create("ensemble", mlp(), members=3, seed=0)
    torch.testing.assert_close(weight_std(ens), weight_samples(ens).std(0), atol=1e-6, rtol=1e-5)
    with pytest.raises(TypeError, match="no weight posterior"):
        weight_std(bbh.create("map", mlp()))
    assert torch.is_grad_enabled()


def test_weight_samples_tf_layout():
    bbb = bbh.create("bbb", mlp(), init_log_var=-30.0)  # sigma ~ 3e-7: samples ~ mu
    w_tf = weight_samples(bbb, 2, layout="tf")
    w0 = bbb.mu[0].detach()  # [5, 3] (out, in)
    torch.testing.assert_close(w_tf[0, :15], w0.t().reshape(-1), atol=1e-5, rtol=0)  # TF's [in, out]
    conv = nn.Sequential(nn.Conv2d(2, 3, 2), nn.Flatten(), nn.Linear(3, 2))
    bbb = bbh.create("bbb", conv, init_log_var=-30.0)
    w_tf = weight_samples(bbb, 1, layout="tf")
    k = bbb.mu[0].detach()  # [3, 2, 2, 2] OIHW
    torch.testing.assert_close(w_tf[0, :24], k.permute(2, 3, 1, 0).reshape(-1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="layout"):
        weight_samples(bbb, 1, layout="hwio")


def test_weight_samples_mnf_kernels_only():
    method = bbh.create("mnf", mlp())
    w = weight_samples(method, 7)
    assert w.shape == (7, 35)  # 15 + 20 kernel scalars, no biases
    assert (w.std(0) > 0).all()


def test_weight_samples_ensemble_members():
    ens = bbh.create("ensemble", mlp(), members=4, seed=0)
    w = weight_samples(ens, 1000)
    assert w.shape == (4, 44)
    first = ens.members[2]
    flat = torch.cat([p.detach().reshape(-1) for p in first.parameters()])
    torch.testing.assert_close(w[2], flat)


@pytest.mark.parametrize("name", ["map", "mc-dropout"])
def test_weight_samples_point_estimates_raise(name):
    options = {"mc-dropout": dict(sites=["net.1"])}.get(name, {})
    method = bbh.create(name, mlp(), **options)
    with pytest.raises(TypeError, match="no weight posterior"):
        weight_samples(method, 10)


# ---------------------------------------------------------------------------------------------------- plots
def test_weight_correlation_matches_numpy():
    np = pytest.importorskip("numpy")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(300, 6, generator=g)
    base[:, 1] = base[:, 0] * 2 + 0.1 * base[:, 1]
    corr = weight_correlation(base, first=5)
    assert corr.shape == (5, 5)
    torch.testing.assert_close(corr, torch.from_numpy(np.corrcoef(base[:, :5].double().numpy().T)))
    assert corr[0, 1] > 0.99
    const = base.clone()
    const[:, 2] = 1.0
    assert torch.isnan(weight_correlation(const, None)[2]).all()


def test_gaussian_kde_integrates_to_one():
    v = torch.randn(500, generator=torch.Generator().manual_seed(1))
    grid = torch.linspace(-6, 6, 2001)
    dens = gaussian_kde(v, grid)
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-3)
    assert float(gaussian_kde(torch.full((10,), 2.0), torch.tensor([2.0]))) > 0


def test_plots_write_pngs_atomically(tmp_path):
    torch.manual_seed(0)
    samples = torch.randn(60, 40) * torch.linspace(0.01, 1, 40)
    samples[:, 3] = 0.5  # a constant scalar: NaN correlations and a zero-width histogram must not fail
    paths = [
        plot_weight_marginals(samples, tmp_path / "weights.png"),
        plot_weight_correlation(samples, tmp_path / "corr.png", first=30),
        plot_weight_std(samples, tmp_path / "weights_std.png"),
        plot_weight_std(samples.std(0) + 1e-3, tmp_path / "sub" / "weights_std_log.png", log_x=True),
    ]
    for p in paths:
        assert p.exists() and p.read_bytes()[:8] == PNG_SIGNATURE
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert leftovers == []
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == sorted(p.name for p in paths)


def test_plots_from_a_posterior(tmp_path):
    method = bbh.create("bbh", mlp(), hidden=(8, 8))
    w = weight_samples(method, 50)
    assert plot_weight_marginals(w, tmp_path / "w.png", first=25).read_bytes()[:8] == PNG_SIGNATURE
    assert plot_weight_correlation(w, tmp_path / "c.png").read_bytes()[:8] == PNG_SIGNATURE  # first > D is fine
    with pytest.raises(ValueError):
        plot_weight_marginals(w[:1], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
