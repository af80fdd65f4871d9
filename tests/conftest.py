"""Shared fixtures: tiny synthetic data made by the tests (no downloads, no real data)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture
def served(tmp_path):
    """An empty folder served over HTTP on 127.0.0.1 (laid out like a data dir), and its base URL."""
    from test_download import _serve

    folder = tmp_path / "served"
    folder.mkdir()
    server, url = _serve(folder)
    yield folder, url
    server.shutdown()
    server.server_close()


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


class TinyConvNet(nn.Module):
    """A small conv net with a declared dropout site, on 1 x 8 x 8 inputs."""

    dropout_sites = ("drop",)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.drop = nn.Identity()
        self.fc = nn.Linear(4 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.drop(torch.relu(self.conv(x))), 1))
