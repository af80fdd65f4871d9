"""Running a module on batched weight samples equals running it once per sample."""

from __future__ import annotations

import pytest
import torch

import bbh
from bbh.core.functional import forward_samples, forward_with


@pytest.mark.parametrize("chunk", [None, 2])
def test_forward_samples_matches_a_loop_over_samples(chunk):
    model = bbh.models.LeNet5()
    method = bbh.create("bbh", model, hidden=(8,))
    samples = method.sample(5)
    x = torch.rand(3, 1, 28, 28)
    batched = forward_samples(model, samples, x, chunk_size=chunk)
    looped = torch.stack([forward_with(model, {k: v[i] for k, v in samples.items()}, x) for i in range(5)])
    assert batched.shape == (5, 3, 10)
    assert torch.allclose(batched, looped, atol=1e-5)


def test_forward_samples_rejects_ragged_samples():
    model = bbh.models.MLP(2, 1, hidden=(4,))
    with pytest.raises(ValueError, match="same leading sample dimension"):
        forward_samples(model, {"net.0.weight": torch.zeros(2, 4, 2), "net.0.bias": torch.zeros(3, 4)},
                        torch.zeros(1, 2))
