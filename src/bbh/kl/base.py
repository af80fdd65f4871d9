"""The interface every KL(q || p) estimator implements, and the flattening of weight samples.

Every estimator is a :class:`KLEstimator`: ``estimator(samples, prior) -> scalar Tensor`` where ``samples`` is
the posterior's ``dict[name, Tensor[n, *shape]]`` (see ``HypernetPosterior.sample``). Trainable estimators (the
adversarial discriminator of Appendix A) override :meth:`KLEstimator.update`, which the method's ``post_step``
calls after every main step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..priors import Prior


def flatten_samples(samples: dict[str, Tensor]) -> Tensor:
    """Concatenate ``dict[name, Tensor[n, *shape]]`` into one ``Tensor[n, D]`` (dict order)."""
    if not samples:
        raise ValueError("no weight samples to estimate a KL from")
    return torch.cat([s.reshape(s.shape[0], -1) for s in samples.values()], dim=1)


class KLEstimator(nn.Module):
    """Base class of KL(q || p) estimators working from weight samples.

    ``forward(samples, prior)`` returns the scalar KL estimate (differentiable with respect to the
    samples). Trainable estimators hold their own parameters and optimizer and take their own step in
    :meth:`update`, which the method's ``post_step`` calls after each main optimizer step with detached
    samples; their parameters are never part of the main optimizer.
    """

    trainable: bool = False

    def forward(self, samples: dict[str, Tensor], prior: Prior) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, samples: dict[str, Tensor], prior: Prior) -> dict[str, float]:
        """Take the estimator's own training step(s); returns values to log. No-op by default."""
        return {}



__all__ = ["KLEstimator", "flatten_samples"]
