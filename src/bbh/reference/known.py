"""Posteriors whose answer is known exactly: Gaussian targets and Bayesian linear regression.

A :class:`GaussianTarget` N(m, Σ) over d variables is the yardstick of the posterior-fidelity benchmark
(``benchmarks/posterior_fidelity.py``, docs/fidelity.md). It serves two roles:

* as the *answer*: its mean, covariance and eigen-directions, against which draws of an approximate
  posterior are scored (:mod:`bbh.evaluation.fidelity`);
* as the *target* of a KL estimator: it has ``log_prob`` (the joint log-density of whole vectors) and
  ``sample(shape)``, so any :class:`bbh.kl.KLEstimator` can estimate KL(q || target) with it in the prior's
  place, and minimising that estimate fits q to the target directly.

:func:`linear_regression_posterior` gives the exact posterior of y = X w + ε, ε ~ N(0, σ² I), w ~ N(0, s² I):

    Λ = X^T X / σ² + I / s²,   Σ = Λ^{-1},   m = Σ X^T y / σ²

(Bishop 2006, Eq. 3.53-3.54). :func:`gaussian_target` builds the benchmark's synthetic targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

TARGET_KINDS = ("isotropic", "anisotropic", "correlated")
"""Synthetic targets: unit scales; scales log-spread over two decades on the axes; the same scales along
random orthogonal directions (so the posterior is correlated in the coordinates q is built in)."""


class GaussianTarget:
    """N(mean, cov) over d variables, held in float64 (the answer is computed exactly).

    Args:
        mean: [d].
        cov: [d, d] symmetric positive definite.
    """

    def __init__(self, mean: Tensor, cov: Tensor) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        d = mean.shape[0]
        if cov.shape != (d, d):
            raise ValueError(f"cov must be [{d}, {d}] for a mean of {d} values, got {tuple(cov.shape)}")
        cov = 0.5 * (cov + cov.T)
        self.mean, self.cov = mean, cov
        self.chol = torch.linalg.cholesky(cov)  # raises on a matrix that is not positive definite
        self.precision = torch.cholesky_inverse(self.chol)
        self.eigvals, self.eigvecs = torch.linalg.eigh(cov)   # ascending; columns are the directions
        self.dim = d

    @property
    def stds(self) -> Tensor:
        """The standard deviations along the eigen-directions, [d] ascending."""
        return self.eigvals.sqrt()

    def entropy(self) -> float:
        """H = d/2 log(2πe) + 1/2 log det Σ."""
        return 0.5 * self.dim * math.log(2 * math.pi * math.e) + float(self.chol.diagonal().log().sum())

    def log_prob(self, w: Tensor) -> Tensor:
        """log N(w; m, Σ) of whole vectors ``w`` [..., d] -> [...] (in w's dtype, differentiable in w)."""
        if w.shape[-1] != self.dim:
            raise ValueError(f"expected vectors of {self.dim} values, got shape {tuple(w.shape)}")
        diff = w - self.mean.to(w)
        maha = ((diff @ self.precision.to(w)) * diff).sum(-1)
        const = 0.5 * self.dim * math.log(2 * math.pi) + float(self.chol.diagonal().log().sum())
        return -0.5 * maha - const

    def sample(self, shape: torch.Size | tuple[int, ...], *, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """Draws of shape ``shape`` whose last dimension is d (the KL estimators ask for ``(m, d)``)."""
        shape = tuple(shape)
        if not shape or shape[-1] != self.dim:
            raise ValueError(f"a Gaussian target over {self.dim} variables draws shape (..., {self.dim}), got {shape}")
        eps = torch.randn(*shape, dtype=torch.float64)
        out = self.mean + eps @ self.chol.T
        return out.to(device=device, dtype=dtype or torch.get_default_dtype())

    def kl_from_gaussian(self, mean: Tensor, cov: Tensor) -> float:
        """KL(N(mean, cov) || self) = 1/2 [tr(Λ C) + (m - μ)^T Λ (m - μ) - d + log det Σ - log det C]."""
        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        diff = mean - self.mean
        _, logdet_c = torch.linalg.slogdet(cov)
        logdet_s = 2 * float(self.chol.diagonal().log().sum())
        value = 0.5 * (float(torch.trace(self.precision @ cov)) + float(diff @ self.precision @ diff) - self.dim
                       + logdet_s - float(logdet_c))
        return value

    def __repr__(self) -> str:
        s = self.stds
        return f"GaussianTarget(d={self.dim}, std {float(s.min()):.3g}..{float(s.max()):.3g})"


def gaussian_target(d: int, kind: str = "correlated", *, decades: float = 2.0, seed: int = 0) -> GaussianTarget:
    """A zero-mean benchmark target over d variables (:data:`TARGET_KINDS`).

    ``isotropic``: Σ = I. ``anisotropic``: Σ = diag(s²) with log10 s evenly spread over ``decades`` decades
    around 1 (so s from 10^{-decades/2} to 10^{decades/2}). ``correlated``: Σ = U diag(s²) U^T with the same s
    and U a random orthogonal matrix (QR of a Gaussian matrix, ``seed``).
    """
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target kind {kind!r}; expected one of {', '.join(map(repr, TARGET_KINDS))}")
    if kind == "isotropic":
        return GaussianTarget(torch.zeros(d), torch.eye(d, dtype=torch.float64))
    scales = torch.logspace(-decades / 2, decades / 2, d, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    scales = scales[torch.randperm(d, generator=gen)]
    if kind == "anisotropic":
        return GaussianTarget(torch.zeros(d), torch.diag(scales**2))
    q, r = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=gen))
    q = q * torch.sign(torch.diagonal(r))
    return GaussianTarget(torch.zeros(d), (q * scales**2) @ q.T)


@dataclass(frozen=True)
class LinearRegressionProblem:
    """Data of a Bayesian linear regression and its exact posterior (:func:`linear_regression_posterior`)."""

    x: Tensor              # [N, d], float32
    y: Tensor              # [N, 1], float32
    noise: float           # σ
    prior_scale: float     # s
    posterior: GaussianTarget


def linear_regression_posterior(x: Tensor, y: Tensor, noise: float, prior_scale: float = 1.0) -> GaussianTarget:
    """The exact posterior N(m, Σ) of w in y = X w + ε (module docstring): Λ = XᵀX/σ² + I/s², m = Λ⁻¹Xᵀy/σ²."""
    x64 = torch.as_tensor(x, dtype=torch.float64)
    y64 = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if x64.dim() != 2 or x64.shape[0] != y64.shape[0]:
        raise ValueError(f"expected x [N, d] and y [N], got {tuple(x64.shape)} and {tuple(y64.shape)}")
    if not (noise > 0 and prior_scale > 0):
        raise ValueError(f"noise and prior_scale must be > 0, got {noise}, {prior_scale}")
    precision = x64.T @ x64 / noise**2 + torch.eye(x64.shape[1], dtype=torch.float64) / prior_scale**2
    cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    return GaussianTarget(cov @ (x64.T @ y64) / noise**2, cov)


def linear_regression_problem(d: int, n: int, *, noise: float = 1.0, prior_scale: float = 1.0,
                              correlation: float = 0.9, seed: int = 0) -> LinearRegressionProblem:
    """A correlated, anisotropic Bayesian linear regression: rows x ~ N(0, C) with C_ij = ρ^|i-j| (an AR(1)
    design, so neighbouring inputs are correlated and the posterior is too), feature scales log-spread over one
    decade, w* ~ N(0, s²), y = X w* + ε."""
    if d < 1 or n < 1:
        raise ValueError(f"d and n must be >= 1, got {d}, {n}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(d, dtype=torch.float64)
    c = correlation ** (idx[:, None] - idx[None, :]).abs()
    x = torch.randn(n, d, dtype=torch.float64, generator=gen) @ torch.linalg.cholesky(c).T
    x = x * torch.logspace(-0.5, 0.5, d, dtype=torch.float64)
    w = torch.randn(d, dtype=torch.float64, generator=gen) * prior_scale
    y = x @ w + noise * torch.randn(n, dtype=torch.float64, generator=gen)
    post = linear_regression_posterior(x, y, noise, prior_scale)
    return LinearRegressionProblem(x.float(), y.float().unsqueeze(1), float(noise), float(prior_scale), post)


__all__ = ["GaussianTarget", "LinearRegressionProblem", "TARGET_KINDS", "gaussian_target",
           "linear_regression_posterior", "linear_regression_problem"]
