"""One set of posterior draws per evaluation (:meth:`bbh.Method.reusing_draws`), FGSM curves from one gradient,
and the CPU loop over samples for convolutional networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

import bbh
import bbh.evaluation.attacks as attacks
from bbh.core.functional import forward_samples, forward_samples_per_input
from bbh.evaluation.api import AttackSpec


def _bbb(seed: int = 0) -> bbh.Method:
    torch.manual_seed(seed)
    return bbh.create("bbb", nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4)), init_log_var=-2.0)


def test_draws_are_reused_inside_the_block_and_fresh_outside() -> None:
    method, x = _bbb(), torch.randn(5, 3)
    with torch.no_grad():
        assert not torch.equal(method.sample_outputs(x, 6), method.sample_outputs(x, 6))
        with method.reusing_draws():
            first = method.sample_outputs(x, 6)
            assert torch.equal(method.sample_outputs(x, 6), first)
            assert torch.equal(method.sample_outputs(x, 6, chunk_size=4), first)  # chunks served in order
            assert torch.equal(method.sample_outputs(x[:2], 6), first[:, :2])  # the same draws for every batch
            with method.reusing_draws(False):  # suspended: fresh draws
                assert not torch.equal(method.sample_outputs(x, 6), first)
            with method.reusing_draws():  # nested: the outer block's draws
                assert torch.equal(method.sample_outputs(x, 6), first)
            assert torch.equal(method.sample_outputs(x, 6), first)
            copies = method.per_copy_outputs(x.expand(6, 5, 3))
            assert not torch.allclose(copies, first)  # attack draws are independent of the predictive's
            assert torch.equal(method.per_copy_outputs(x.expand(6, 5, 3)), copies)
        assert not torch.equal(method.sample_outputs(x, 6), first)


def test_an_fgsm_curve_takes_one_gradient_and_matches_fgsm(monkeypatch: pytest.MonkeyPatch) -> None:
    method, x, y = _bbb(), torch.randn(12, 3), torch.randint(0, 4, (12,))
    calls = []
    original = attacks.fgsm_direction
    monkeypatch.setattr(attacks, "fgsm_direction", lambda *a, **k: calls.append(1) or original(*a, **k))
    eps = (0.0, 0.1, 0.3)
    res = bbh.evaluate(method, (x, y), attacks=[AttackSpec("fgsm", epsilons=eps, images=12, samples=5)],
                       n_samples=5, seed=3)
    assert len(calls) == 1
    # the same numbers by hand: the curve's draws are the evaluation's, seeded the same way
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        with method.evaluating(), method.reusing_draws():
            clean = method.predict(x, 5).mean
            d = original(method, x, y, n_samples=5)
            for e, point in zip(eps, res.adversarial["fgsm"].points):
                mean = clean if e == 0 else method.predict(x + e * d, 5).mean
                assert point.accuracy == pytest.approx(float((mean.argmax(-1) == y).float().mean()))
    assert attacks.fgsm(method, x, y, 0.2, n_samples=5).shape == x.shape


def test_the_cpu_loop_over_samples_equals_vmap_for_a_conv_net() -> None:
    """The CPU path for conv nets (per draw, channels-last, slices of 128) gives vmap's numbers."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    samples = {k: v.detach() + 0.1 * torch.randn(4, *v.shape) for k, v in net.named_parameters()}
    x = torch.randn(300, 1, 6, 6)  # more than one CPU slice (CPU_CONV_SLICE = 128)
    by_vmap = vmap(lambda p: functional_call(net, p, (x,)))(samples)
    assert torch.allclose(forward_samples(net, samples, x), by_vmap, atol=1e-6)
    xs = torch.randn(4, 5, 1, 6, 6)
    per_input = vmap(lambda p, xi: functional_call(net, p, (xi,)))(samples, xs)
    assert torch.allclose(forward_samples_per_input(net, samples, xs), per_input, atol=1e-6)


def test_fgsm_gradients_in_slices_of_images_give_the_same_curve(monkeypatch: pytest.MonkeyPatch) -> None:
    """The curve's gradient is taken GRADIENT_IMAGES images at a time; with the evaluation's draws that changes
    nothing (each image's direction depends on its own loss only)."""
    import bbh.evaluation.api as api

    method, x, y = _bbb(), torch.randn(12, 3), torch.randint(0, 4, (12,))
    spec = [AttackSpec("fgsm", epsilons=(0.0, 0.2, 0.5), images=12, samples=5, gradient="expectation")]
    whole = bbh.evaluate(method, (x, y), attacks=spec, n_samples=5, seed=1).adversarial["fgsm"].points
    monkeypatch.setattr(api, "GRADIENT_IMAGES", 5)
    sliced = bbh.evaluate(method, (x, y), attacks=spec, n_samples=5, seed=1).adversarial["fgsm"].points
    assert [p.accuracy for p in sliced] == [p.accuracy for p in whole]
    assert [p.entropy for p in sliced] == pytest.approx([p.entropy for p in whole], abs=1e-6)


def test_the_cpu_path_keeps_a_batch_statistics_norm_on_the_whole_batch() -> None:
    """BatchNorm with track_running_stats=False (the authors' ResNet norm "batch") normalises with the batch it
    is given, also in eval mode: the CPU path must not slice that batch."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, track_running_stats=False), nn.ReLU(),
                        nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    samples = {k: v.detach() + 0.1 * torch.randn(4, *v.shape) for k, v in net.named_parameters()}
    x = torch.randn(300, 1, 6, 6)
    by_vmap = vmap(lambda p: functional_call(net, p, (x,)))(samples)
    assert torch.allclose(forward_samples(net, samples, x), by_vmap, atol=1e-5)
