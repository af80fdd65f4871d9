"""How close an approximate posterior is to a known one, and how a KL estimator behaves where the answer is known.

The instruments of the posterior-fidelity benchmark (``benchmarks/posterior_fidelity.py``, docs/fidelity.md),
against a :class:`~bbh.reference.known.GaussianTarget` N(m, Σ) with eigen-directions v_k and stds s_k:

* :func:`direction_std_ratios` — for draws w_1..n of q, the std of v_k^T w over the draws divided by s_k, for every
  k: 1 everywhere is the answer; a ratio of 0.1 is a direction q has collapsed, 10 one it has inflated.
* :func:`gaussian_fit_kl` — KL(N(mean, cov of the draws) || N(m, Σ)): the whole-shape error of q's first two moments.
* :func:`entropy_gradient_per_scale` — for q = N(0, diag s²) (or its semi-implicit split), the gradient of an
  estimator's entropy Ĥ (Ĥ = exact cross-entropy minus its KL estimate) with respect to each log s_d. The exact
  value is 1 in every direction (H = Σ_d log s_d + const); a value near 0 is a direction that can collapse for free.
* :func:`estimator_error` — the estimate minus the exact KL(N(0, diag s²) || N(0, I)), over repeated draws.
* :func:`fit_to_target` — minimise an estimator's KL(q || target) over a posterior's parameters (the target in the
  prior's place), which is what the estimator asks of q when the likelihood is the target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.priors import NormalPrior
from ..kl import GaussianLayer, KLEstimator, estimate_kl, flatten_samples
from ..reference.known import GaussianTarget


def direction_std_ratios(draws: Tensor, target: GaussianTarget) -> Tensor:
    """std(v_k^T w) / s_k for every eigen-direction k of the target ([d], the target's ascending order)."""
    w = torch.as_tensor(draws, dtype=torch.float64).reshape(draws.shape[0], -1)
    if w.shape[1] != target.dim or w.shape[0] < 2:
        raise ValueError(f"expected at least 2 draws of {target.dim} values, got {tuple(w.shape)}")
    proj = (w - w.mean(0)) @ target.eigvecs
    return proj.std(0) / target.stds


def percentiles(values: Tensor, qs: Sequence[float] = (0.05, 0.5, 0.95)) -> tuple[float, ...]:
    """The given quantiles of ``values`` (default 5th / 50th / 95th percentile)."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    return tuple(float(x) for x in torch.quantile(v, torch.tensor(list(qs), dtype=torch.float64)))


def gaussian_fit_kl(draws: Tensor, target: GaussianTarget) -> float:
    """KL(N(mean, cov of the draws) || target); needs more draws than dimensions (else NaN)."""
    w = torch.as_tensor(draws, dtype=torch.float64).reshape(draws.shape[0], -1)
    if w.shape[0] <= w.shape[1]:
        return math.nan
    return target.kl_from_gaussian(w.mean(0), torch.cov(w.T))


def _entropy_of(estimator: KLEstimator, log_scales: Tensor, n: int, gaussian_share: float) -> Tensor:
    s = log_scales.exp()
    prior = NormalPrior(1.0)
    if estimator.uses_gaussian_layer:
        means = s * math.sqrt(1 - gaussian_share) * torch.randn(n, s.shape[0], dtype=s.dtype)
        sigma = s * math.sqrt(gaussian_share)
        w = means + sigma * torch.randn_like(means)
        layer = GaussianLayer(means={"w": means}, scales={"w": sigma})
    else:
        w = s * torch.randn(n, s.shape[0], dtype=s.dtype)
        layer = None
    kl = estimate_kl(estimator, {"w": w}, prior, layer)
    cross_entropy = -prior.log_prob(w).sum(1).mean()
    return cross_entropy - kl


def entropy_gradient_per_scale(estimator: KLEstimator, scales: Tensor, n: int, *, repeats: int = 8,
                               gaussian_share: float = 0.5, seed: int = 0) -> Tensor:
    """Mean over ``repeats`` of ∂Ĥ/∂log s_d for q = N(0, diag s²) drawn n times ([d]; exact: 1 each).

    An estimator with a Gaussian layer sees q as the semi-implicit split w = μ + σ ε with μ = √(1-ρ) s z and
    σ = √ρ s (ρ = ``gaussian_share``), which is the same N(0, diag s²).
    """
    torch.manual_seed(seed)
    log_s = torch.as_tensor(scales, dtype=torch.float64).log().clone().requires_grad_(True)
    total = torch.zeros_like(log_s)
    for _ in range(repeats):
        (grad,) = torch.autograd.grad(_entropy_of(estimator, log_s, n, gaussian_share), log_s)
        total += grad
    return total / repeats


@dataclass(frozen=True)
class EstimatorError:
    """Estimate minus truth over repeated draws: ``bias`` (mean), ``spread`` (std), ``truth``."""

    bias: float
    spread: float
    truth: float


def estimator_error(estimator: KLEstimator, scales: Tensor, n: int, *, repeats: int = 16, gaussian_share: float = 0.5,
                    seed: int = 0) -> EstimatorError:
    """The KL estimate of q = N(0, diag s²) against p = N(0, I) minus the exact Σ (s²/2 - log s - 1/2)."""
    torch.manual_seed(seed)
    s = torch.as_tensor(scales, dtype=torch.float64)
    truth = float((0.5 * s**2 - s.log() - 0.5).sum())
    prior = NormalPrior(1.0)
    values = []
    with torch.no_grad():
        for _ in range(repeats):
            h = _entropy_of(estimator, s.log(), n, gaussian_share)
            w = s * torch.randn(4096, s.shape[0], dtype=s.dtype)   # the cross-entropy, nearly exactly
            values.append(float(-prior.log_prob(w).sum(1).mean() - h))
    v = torch.tensor(values)
    return EstimatorError(float(v.mean()) - truth, float(v.std()), truth)


@dataclass(frozen=True)
class Fit:
    """What :func:`fit_to_target` measured: the last KL estimates and the seconds per step."""

    final_kl: float
    seconds_per_step: float


def fit_to_target(posterior: nn.Module, estimator: KLEstimator, target: GaussianTarget, *, steps: int,
                  draws_per_step: int, lr: float = 1e-3) -> Fit:
    """Adam on the posterior's parameters minimising the estimated KL(q || target), the learning rate decayed from
    ``lr`` to 0 on a cosine over the steps.

    ``posterior`` has ``sample(n) -> {name: [n, ...]}`` (and ``draw(n) -> (draws, GaussianLayer)`` for an estimator
    that uses the Gaussian layer); its draws, flattened, are vectors of the target's dimension.
    """
    opt = torch.optim.Adam(posterior.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    recent: list[float] = []
    start = time.perf_counter()
    for _ in range(steps):
        if estimator.uses_gaussian_layer:
            draws, layer = posterior.draw(draws_per_step)
        else:
            draws, layer = posterior.sample(draws_per_step), None
        kl = estimate_kl(estimator, draws, target, layer)
        if not torch.isfinite(kl):
            raise ValueError(f"the KL estimate became {float(kl)} (lr {lr})")
        opt.zero_grad(set_to_none=True)
        kl.backward()
        opt.step()
        schedule.step()
        recent = (recent + [float(kl.detach())])[-50:]
    seconds = (time.perf_counter() - start) / max(steps, 1)
    return Fit(sum(recent) / max(len(recent), 1), seconds)


def draws_of(posterior: nn.Module, n: int, chunk: int = 1000) -> Tensor:
    """n draws of a posterior, flattened to [n, D] (no autograd; in chunks)."""
    out = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            out.append(flatten_samples(posterior.sample(min(chunk, n - start))))
    return torch.cat(out)


__all__ = ["EstimatorError", "Fit", "direction_std_ratios", "draws_of", "entropy_gradient_per_scale",
           "estimator_error", "fit_to_target", "gaussian_fit_kl", "percentiles"]
