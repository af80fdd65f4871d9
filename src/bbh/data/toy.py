"""The toy regression of paper Fig. 1 (Hernández-Lobato & Adams 2015): y = x^3 + N(0, 9^2)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

TOY_NOISE = 9.0
TOY_RANGE = (-4.0, 4.0)


def toy_function(x: Tensor) -> Tensor:
    """The true function f(x) = x^3."""
    return x**3


def make_toy_data(n: int = 20, seed: int = 1, noise: float = TOY_NOISE) -> tuple[Tensor, Tensor]:
    """``n`` points with x ~ U(-4, 4) and y = x^3 + N(0, noise^2), from ``numpy.random.RandomState(seed)``.

    The authors seed ``RandomState(1)`` (docs/protocol.md §1.4). Returns float32 tensors of shape [n, 1].
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.RandomState(seed)
    x = rng.uniform(*TOY_RANGE, size=(n, 1))
    y = x**3 + rng.normal(0.0, noise, size=(n, 1))
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)


def toy_grid(n: int = 500, low: float = -6.0, high: float = 6.0) -> Tensor:
    """The evaluation grid ``linspace(-6, 6, 500)`` as [n, 1]."""
    return torch.linspace(low, high, n).unsqueeze(1)
