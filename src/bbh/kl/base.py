"""The interface every KL(q || p) estimator implements, and the flattening of weight samples.

Every estimator is a :class:`KLEstimator`: ``estimator(samples, prior) -> scalar Tensor`` where ``samples`` is
the posterior's ``dict[name, Tensor[n, *shape]]`` (see ``HypernetPosterior.sample``). Trainable estimators (the
adversarial discriminator of Appendix A) override :meth:`KLEstimator.update`, which the method's ``post_step``
calls after every main step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..core.priors import Prior


def flatten_samples(samples: dict[str, Tensor]) -> Tensor:
    """Concatenate ``dict[name, Tensor[n, *shape]]`` into one ``Tensor[n, D]`` (dict order)."""
    if not samples:
        raise ValueError("no weight samples to estimate a KL from")
    return torch.cat([s.reshape(s.shape[0], -1) for s in samples.values()], dim=1)


def pairwise_sq_distances(a: Tensor, b: Tensor) -> Tensor:
    """``[n, m]`` squared Euclidean distances ||a_i - b_j||² of rows a [n, D] and b [m, D], from exact differences
    one row of ``b`` at a time (memory O(n D); no ||a||² + ||b||² - 2 a·b cancellation for nearby draws)."""
    return torch.stack([((a - b[j]) ** 2).sum(1) for j in range(b.shape[0])], dim=1)


@dataclass(frozen=True)
class GaussianLayer:
    """The Gaussian layer of a semi-implicit posterior: draw i is w_i = means_i + ε_i with ε_i ~ N(0, C) for each
    generated tensor, C either diagonal or a Kronecker product.

    ``means``: ``{name: Tensor[n, *shape]}`` (the implicit part, one per draw). Per tensor either ``scales[name]``
    (``[*shape]``, > 0: C = diag(σ²)) or ``row_factors[name]`` A ``[o, o]`` and ``col_factors[name]`` B ``[i, i]``,
    lower-triangular with a positive diagonal, for the tensor viewed as a matrix [o, i] (o its first dimension, 1
    for a vector): W = M + A E Bᵀ, so Cov(W_ab, W_cd) = (AAᵀ)_ac (BBᵀ)_bd, the matrix-variate Gaussian of Louizos &
    Welling (2016). Estimators that use the layer set ``uses_gaussian_layer``.
    """

    means: dict[str, Tensor]
    scales: dict[str, Tensor] = field(default_factory=dict)
    row_factors: dict[str, Tensor] = field(default_factory=dict)
    col_factors: dict[str, Tensor] = field(default_factory=dict)

    def whiten(self, name: str, x: Tensor) -> Tensor:
        """C^{-1/2} x for ``x`` [n, *shape] of tensor ``name``, flattened to [n, numel]."""
        n = x.shape[0]
        if name in self.scales:
            return (x / self.scales[name]).reshape(n, -1)
        a, b = self.row_factors[name], self.col_factors[name]
        o, i = a.shape[0], b.shape[0]
        # all n right-hand sides as the columns of one solve (a batch of solves against one broadcast factor
        # would make autograd build an [n, i, i] gradient): Y = A^{-1} X, then Z^T = B^{-1} Y^T
        y = torch.linalg.solve_triangular(a, x.reshape(n, o, i).permute(1, 0, 2).reshape(o, n * i), upper=False)
        y = y.reshape(o, n, i).permute(2, 1, 0).reshape(i, n * o)                                  # Y^T columns
        z = torch.linalg.solve_triangular(b, y, upper=False).reshape(i, n, o)
        return z.permute(1, 2, 0).reshape(n, -1)

    def half_log_det(self, name: str) -> Tensor:
        """½ log det C of tensor ``name``: Σ log σ, or i Σ log A_kk + o Σ log B_kk for the Kronecker form."""
        if name in self.scales:
            return self.scales[name].log().sum()
        a, b = self.row_factors[name], self.col_factors[name]
        return b.shape[0] * a.diagonal().log().sum() + a.shape[0] * b.diagonal().log().sum()

class KLEstimator(nn.Module):
    """Base class of KL(q || p) estimators working from weight samples.

    ``forward(samples, prior)`` returns the scalar KL estimate (differentiable with respect to the
    samples). Trainable estimators hold their own parameters and optimizer and take their own step in
    :meth:`update`, which the method's ``post_step`` calls after each main optimizer step with detached
    samples; their parameters are never part of the main optimizer.
    """

    trainable: bool = False
    uses_gaussian_layer: bool = False
    """True for estimators that need the posterior's :class:`GaussianLayer` (``forward(samples, prior, layer)``)."""

    def forward(self, samples: dict[str, Tensor], prior: Prior) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, samples: dict[str, Tensor], prior: Prior) -> dict[str, float]:
        """Take the estimator's own training step(s); returns values to log. No-op by default."""
        return {}



def estimate_kl(estimator: KLEstimator, samples: dict[str, Tensor], prior: Prior,
                layer: GaussianLayer | None = None) -> Tensor:
    """The one call every method makes: ``estimator(samples, prior)``, with the Gaussian layer for the
    estimators that use it (a clear error when the posterior has none)."""
    if not estimator.uses_gaussian_layer:
        return estimator(samples, prior)
    if layer is None:
        raise ValueError(f"{type(estimator).__name__} needs a semi-implicit posterior (a Gaussian layer on the "
                         f"hypernet's output); build BbH with kl='semi-implicit' or semi_implicit=True")
    return estimator(samples, prior, layer)


__all__ = ["GaussianLayer", "KLEstimator", "estimate_kl", "flatten_samples", "pairwise_sq_distances"]
