"""Shared fixtures: tiny synthetic data made by the tests (no downloads, no real data)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_blobs(n: int = 256, classes: int = 4, dim: int = 2, seed: int = 0, spread: float = 0.5):
    """Gaussian blobs around well-separated centres: an easy classification problem."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + spread * torch.randn(n, dim, generator=g)
    return x, y


@pytest.fixture
def blobs():
    return make_blobs()
