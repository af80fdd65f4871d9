"""The closed-form KL between factorised Gaussians (Bayes by Backprop; paper Eq. 1, Table 5 "analytic")."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gaussian_kl(mu: Tensor, sigma: Tensor, prior_scale: float = 1.0) -> Tensor:
    """Closed-form KL( N(mu, sigma^2) || N(0, s^2) ), summed over all elements.

    KL = Σ [ log(s / sigma) + (sigma^2 + mu^2) / (2 s^2) - 1/2 ]   (docs/protocol.md §3.3)

    Args:
        mu: posterior means.
        sigma: posterior standard deviations (> 0), broadcastable to ``mu``.
        prior_scale: the prior standard deviation s.
    """
    s2 = prior_scale**2
    return (math.log(prior_scale) - torch.log(sigma) + (sigma**2 + mu**2) / (2 * s2) - 0.5).sum()


__all__ = ["gaussian_kl"]
