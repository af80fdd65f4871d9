"""KL(q || p) for a semi-implicit posterior: the SIVI lower bound on the entropy plus the exact cross-entropy.

A semi-implicit posterior (Yin & Zhou, ICML 2018, "Semi-Implicit Variational Inference") puts a Gaussian layer on
the hypernet's output: z ~ N(0, I), μ = g(z | θ), w = μ + σ ⊙ ε with ε ~ N(0, I) and σ > 0 learned per weight, so

    q(w) = E_z[ N(w; g(z), diag σ²) ]

(or, per tensor, a matrix-variate Gaussian layer N(M, AAᵀ ⊗ BBᵀ) whose Kronecker factors carry correlations within
a layer; :class:`~bbh.kl.GaussianLayer`; below, σ stands for C^{1/2} and the distances are the whitened ones)

is a continuous mixture with a density that can be bounded. With n draws (μ_j, w_j), each w_i generated from its
own μ_i, the estimate

    Ĥ[q] = -(1/n) Σ_i log( (1/n) Σ_j N(w_i; μ_j, diag σ²) )

is a lower bound on H[q] in expectation (SIVI's bound L_K with the other n - 1 draws as the K mixing samples;
Yin & Zhou 2018, Theorem 1) that tightens as n grows. The KL estimate is

    KL̂(q || p) = -(1/n) Σ_i log p(w_i) - Ĥ[q]       (an upper bound of the KL in expectation).

What this buys over a nearest-neighbour entropy: every direction of w carries its own term -log σ_d, so the
gradient with respect to each log σ_d is exact (1 per direction) however the posterior is shaped and however many
directions there are — a direction cannot collapse without paying for it. What it does not: the implicit part g(z)
is credited at most log n nats of entropy (Ĥ ≤ H[N(0, diag σ²)] + log n), so the bound prefers to carry spread in
σ rather than in g — correlations between weights enter only as far as those log n nats pay for them
(docs/fidelity.md measures both).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.priors import Prior
from .base import GaussianLayer, KLEstimator, flatten_samples, pairwise_sq_distances


def semi_implicit_entropy(w: Tensor, means: Tensor, scales: Tensor) -> Tensor:
    """Ĥ = -(1/n) Σ_i log((1/n) Σ_j N(w_i; μ_j, diag σ²)) for draws w [n, D], their means [n, D], scales [D]."""
    if w.dim() != 2 or means.shape != w.shape or scales.shape != w.shape[1:]:
        raise ValueError(f"expected draws [n, D], means [n, D] and scales [D], got {tuple(w.shape)}, "
                         f"{tuple(means.shape)}, {tuple(scales.shape)}")
    return whitened_entropy(w / scales, means / scales, scales.log().sum())


def whitened_entropy(u: Tensor, v: Tensor, half_log_det: Tensor) -> Tensor:
    """The SIVI entropy from whitened draws u_i = C^{-1/2} w_i and means v_j = C^{-1/2} μ_j ([n, D] each) and
    ½ log det C: Ĥ = -(1/n) Σ_i [logsumexp_j(-½ ||u_i - v_j||²) - log n] + ½ log det C + (D/2) log 2π.

    Computed one partner j at a time from exact differences (memory O(n D), time O(n² D)).
    """
    n, d = u.shape
    sq = pairwise_sq_distances(u, v)                                                        # [n, n]
    log_mix = torch.logsumexp(-0.5 * sq, dim=1) - math.log(n) - half_log_det - 0.5 * d * math.log(2 * math.pi)
    return -log_mix.mean()


class SemiImplicitKL(KLEstimator):
    """KL = -(SIVI entropy bound) + exact Monte Carlo cross-entropy (module docstring; ``kl="semi-implicit"``).

    Needs a prior with ``log_prob`` and a posterior with a Gaussian layer (BbH builds one for this estimator).
    """

    uses_gaussian_layer = True

    def forward(self, samples: dict[str, Tensor], prior: Prior, layer: GaussianLayer | None = None) -> Tensor:
        if layer is None:
            raise ValueError("the semi-implicit KL needs the posterior's Gaussian layer (means and scales)")
        log_prob = getattr(prior, "log_prob", None)
        if not callable(log_prob):
            raise TypeError(f"the semi-implicit KL estimator needs a prior with a log_prob method (e.g. NormalPrior); "
                            f"{type(prior).__name__} has none")
        w = flatten_samples(samples)
        if w.shape[0] < 2:
            raise ValueError(f"the semi-implicit entropy bound needs at least 2 draws, got {w.shape[0]}")
        u = torch.cat([layer.whiten(k, samples[k]) for k in samples], dim=1)
        v = torch.cat([layer.whiten(k, layer.means[k]) for k in samples], dim=1)
        half_log_det = sum(layer.half_log_det(k) for k in samples)
        cross_entropy = -log_prob(w).reshape(w.shape[0], -1).sum(1).mean()
        return cross_entropy - whitened_entropy(u, v, half_log_det)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return "SemiImplicitKL()"


__all__ = ["SemiImplicitKL", "semi_implicit_entropy", "whitened_entropy"]
