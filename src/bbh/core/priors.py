"""Priors over network weights.

Bayes by Hypernet only ever *samples* from the prior (the nearest-neighbour KL of Eq. 2 compares
posterior samples with prior samples), so any object with a ``sample(shape)`` method is a prior here
(paper Sec. 4: "BbH enables the use of highly complex priors as it is merely required to sample from
them"). Priors that also know their log-density or scale expose it for estimators that can use it.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Prior(Protocol):
    """Anything that draws i.i.d. weight samples of a given shape."""

    def sample(self, shape: torch.Size | tuple[int, ...], *, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> Tensor: ...


class NormalPrior:
    """Independent zero-mean Normal prior p(w) = prod_i N(w_i; 0, scale^2).

    The paper uses ``scale = 1`` for every method (paper Sec. 3; docs/protocol.md §3.1).

    Args:
        scale: standard deviation of every weight, > 0.
    """

    def __init__(self, scale: float = 1.0) -> None:
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"NormalPrior scale must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)

    def sample(self, shape: torch.Size | tuple[int, ...], *, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """Draw ``shape`` i.i.d. values from N(0, scale^2)."""
        return torch.randn(shape, device=device, dtype=dtype) * self.scale

    def log_prob(self, w: Tensor) -> Tensor:
        """Elementwise log N(w; 0, scale^2) = -w^2 / (2 s^2) - log s - log(2 pi) / 2."""
        return -0.5 * (w / self.scale) ** 2 - math.log(self.scale) - 0.5 * math.log(2 * math.pi)

    def __repr__(self) -> str:
        return f"NormalPrior(scale={self.scale})"


def as_prior(prior: Prior | float | int) -> Prior:
    """Accept a prior object or a number (the scale of a :class:`NormalPrior`)."""
    if isinstance(prior, bool):
        raise TypeError("prior must be a Prior or a positive number, got a bool")
    if isinstance(prior, (int, float)):
        return NormalPrior(float(prior))
    if not callable(getattr(prior, "sample", None)):
        raise TypeError(f"prior must have a sample(shape) method or be a number, got {type(prior).__name__}")
    return prior
