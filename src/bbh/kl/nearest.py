"""KL divergence estimators KL(q || p) between a weight posterior q and a prior p.

The sample-based estimators:

* :func:`nn_kl_per_weight` / :func:`nn_kl_full` — the sample-based nearest-neighbour estimator of
  paper Eq. 2 (Pérez-Cruz 2008; Jiang 2018), which only needs samples of q and of p:

      KL(q || p) ≈ (d / n) Σ_{i=1..n} log( min_j ||w_q^i - w_p^j|| / min_{j≠i} ||w_q^i - w_q^j|| )
                   + log( m / (n - 1) ),

  with n posterior samples, m prior samples and d the dimension of one sample. "Per weight" treats every
  scalar weight as its own 1-d problem and sums the D estimates (the paper's choice, "independent kernel");
  "full" treats the whole weight vector as one d = D dimensional sample (Table 5 "Kernel with full prior").
* trainable estimators (the adversarial discriminator of Appendix A) subclass :class:`KLEstimator` and
  override :meth:`KLEstimator.update`, which the training loop calls after every main step.

Every estimator is a :class:`KLEstimator`: ``estimator(samples, prior) -> scalar Tensor`` where
``samples`` is the posterior's ``dict[name, Tensor[n, *shape]]`` (see ``HypernetPosterior.sample``).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ..backends import ops
from ..core.priors import Prior
from .base import KLEstimator, flatten_samples

DISTANCE_EPS = 1e-8
"""Added to squared distances before the square root: distances are floored smoothly at 1e-4, so the
log-ratio of Eq. 2 stays finite when two samples coincide (the authors' guard, docs/protocol.md §3.2)."""


def _distance(a: Tensor, b: Tensor, dim: int | None = None) -> Tensor:
    """Euclidean distance sqrt(Σ (a - b)^2 + eps), over ``dim`` (elementwise |a - b| when ``dim`` is None)."""
    sq = (a - b) ** 2
    if dim is not None:
        sq = sq.sum(dim)
    return torch.sqrt(sq + DISTANCE_EPS)


def _check_samples(q: Tensor, p: Tensor) -> None:
    if q.dim() != 2 or p.dim() != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(
            f"expected posterior samples [n, D] and prior samples [m, D] with the same D, "
            f"got {tuple(q.shape)} and {tuple(p.shape)}"
        )
    if q.shape[0] < 2:
        raise ValueError(f"the nearest-neighbour KL needs at least 2 posterior samples, got {q.shape[0]}")
    if p.shape[0] < 1:
        raise ValueError("the nearest-neighbour KL needs at least 1 prior sample")


def _per_weight_value_and_grad(q: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """Value of the per-weight estimator (without its constant) and its gradient with respect to q.

    With r = sqrt(delta^2 + eps), j* the nearest prior sample and k* the nearest other posterior sample:

        d log rho_ik / d q_ik = (q_ik - p_j*k) / rho_ik^2
        d (-log nu_ik) / d q_ik = -(q_ik - q_k*k) / nu_ik^2,   d (-log nu_ik) / d q_k*k = +(q_ik - q_k*k) / nu_ik^2
    """
    n = q.shape[0]
    to_prior = q.unsqueeze(1) - p.unsqueeze(0)                                   # [n, m, D]
    rho2, nearest_prior = (to_prior * to_prior).min(dim=1)
    rdiff = torch.gather(to_prior, 1, nearest_prior.unsqueeze(1)).squeeze(1)
    within = q.unsqueeze(1) - q.unsqueeze(0)                                     # [n, n, D]
    self_pair = torch.eye(n, dtype=torch.bool, device=q.device).unsqueeze(-1)
    nu2, partner = torch.where(self_pair, math.inf, within * within).min(dim=1)
    ndiff = torch.gather(within, 1, partner.unsqueeze(1)).squeeze(1)
    rho2 = rho2 + DISTANCE_EPS
    nu2 = nu2 + DISTANCE_EPS
    value = 0.5 * (torch.log(rho2) - torch.log(nu2)).sum() / n
    push = ndiff / nu2 / n
    grad = (rdiff / rho2 / n - push).scatter_add(0, partner, push)
    return value, grad


COMPILE_MIN_WEIGHTS = 1 << 16
"""With ``compile=None`` the per-weight estimator is compiled (``torch.compile``) from this many weights on;
for smaller posteriors eager mode is fast enough and the one-off compilation would dominate."""

_compiled: dict[str, object] = {}


def _compiled_value_and_grad():
    """``torch.compile``d :func:`_per_weight_value_and_grad`, or None where compilation is unavailable."""
    if "fn" not in _compiled:
        try:
            _compiled["fn"] = torch.compile(_per_weight_value_and_grad, dynamic=True)
        except Exception as err:  # pragma: no cover - torch builds without a compiler
            warnings.warn(f"torch.compile unavailable ({err}); the KL estimator runs eagerly", stacklevel=3)
            _compiled["fn"] = None
    return _compiled["fn"]


class _PerWeightNNKL(torch.autograd.Function):
    """The per-weight estimator with its analytic gradient (no autograd graph through [n, n, D] tensors)."""

    @staticmethod
    def forward(ctx, q: Tensor, p: Tensor, compiled: bool) -> Tensor:  # type: ignore[override]
        def torch_path(q: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
            if compiled and (fn := _compiled_value_and_grad()) is not None:
                try:
                    return fn(q, p)
                except Exception as err:  # pragma: no cover - e.g. no C++ compiler at run time
                    warnings.warn(f"compiled KL estimator failed ({type(err).__name__}: {err}); "
                                  f"falling back to eager mode", stacklevel=2)
                    _compiled["fn"] = None
            return _per_weight_value_and_grad(q, p)

        value, grad = ops.nn_kl_per_weight(q, p, DISTANCE_EPS, torch_path)  # native kernel where it applies
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return g * grad, None, None


def nn_kl_per_weight(q: Tensor, p: Tensor, chunk_size: int = 1 << 20, compile: bool | None = None) -> Tensor:
    """Nearest-neighbour KL of Eq. 2 with every weight its own 1-d sample (d = 1), summed over weights.

    KL ≈ Σ_{k=1..D} [ (1/n) Σ_i log( min_j |q_ik - p_jk| / min_{j≠i} |q_ik - q_jk| ) + log(m / (n - 1)) ]

    Exact when the posterior factorises over weights, as the N(0, s^2 I) prior does; it ignores the
    posterior's correlations between weights (the paper's "independent" kernel estimator). Distances are
    sqrt(delta^2 + 1e-8), the authors' guard; note that it biases the estimate low for weights whose
    samples lie within ~1e-4 of each other.

    Args:
        q: posterior samples [n, D], n >= 2 (differentiable).
        p: prior samples [m, D] (no gradient).
        chunk_size: weights processed at once; memory is O((n^2 + n m) * chunk_size).
        compile: run the estimator through ``torch.compile`` (one fused loop, ~7x faster on the CPU for
            LeNet-5; the first call compiles for a few seconds). None: from
            :data:`COMPILE_MIN_WEIGHTS` weights on. Falls back to eager mode where compilation fails.
    """
    _check_samples(q, p)
    n, d_total = q.shape
    m = p.shape[0]
    p = p.detach()
    compiled = d_total >= COMPILE_MIN_WEIGHTS if compile is None else bool(compile)
    parts = [_PerWeightNNKL.apply(q[:, s:s + chunk_size], p[:, s:s + chunk_size], compiled)
             for s in range(0, d_total, chunk_size)]
    total = parts[0] if len(parts) == 1 else torch.stack(parts).sum()
    return total + d_total * math.log(m / (n - 1))


def nn_kl_per_weight_reference(q: Tensor, p: Tensor) -> Tensor:
    """Plain-autograd version of :func:`nn_kl_per_weight` (broadcast [n, n, D] tensors); for tests."""
    _check_samples(q, p)
    n, d_total = q.shape
    rho = _distance(q.unsqueeze(1), p.unsqueeze(0)).amin(dim=1)
    within = _distance(q.unsqueeze(1), q.unsqueeze(0))
    eye = torch.eye(n, dtype=torch.bool, device=q.device).unsqueeze(-1)
    nu = within.masked_fill(eye, math.inf).amin(dim=1)
    return (torch.log(rho) - torch.log(nu)).sum() / n + d_total * math.log(p.shape[0] / (n - 1))


def nn_kl_full(q: Tensor, p: Tensor) -> Tensor:
    """Nearest-neighbour KL of Eq. 2 over whole weight vectors (d = D).

    KL ≈ (D / n) Σ_i log( min_j ||q_i - p_j|| / min_{j≠i} ||q_i - q_j|| ) + log(m / (n - 1))

    The authors' code adds the constant D times instead of once (docs/protocol.md §3.2); the constant has no
    gradient, and here it is added once, as in Eq. 2. With few samples in high dimension this estimate is
    dominated by the ratio of two distances, which is why the paper prefers :func:`nn_kl_per_weight`.

    Args:
        q: posterior samples [n, D], n >= 2 (differentiable).
        p: prior samples [m, D].
    """
    _check_samples(q, p)
    n, d = q.shape
    m = p.shape[0]
    # Pairwise distances by explicit differences (no ||a||^2 + ||b||^2 - 2ab cancellation when the
    # posterior is narrow), one partner at a time to keep memory at O(n * D).
    rho = torch.stack([_distance(q, p[j], dim=1) for j in range(m)], dim=1).amin(dim=1)      # [n]
    within = torch.stack([_distance(q, q[j], dim=1) for j in range(n)], dim=1)               # [n, n]
    nu = within.masked_fill(torch.eye(n, dtype=torch.bool, device=q.device), math.inf).amin(dim=1)
    return d * (torch.log(rho) - torch.log(nu)).mean() + math.log(m / (n - 1))


class NearestNeighbourKL(KLEstimator):
    """Eq. 2 estimator with fresh prior samples at every call.

    Args:
        full: False (default) for the per-weight estimator (paper's choice), True for whole vectors.
        num_prior_samples: m, the prior samples drawn per call (authors: 5, equal to n).
        chunk_size: weights per chunk for the per-weight estimator.
        compile: ``torch.compile`` the per-weight estimator (None: for large posteriors only).
    """

    def __init__(self, full: bool = False, num_prior_samples: int = 5, chunk_size: int = 1 << 20,
                 compile: bool | None = None) -> None:
        super().__init__()
        self.compile = compile
        if num_prior_samples < 1:
            raise ValueError(f"num_prior_samples must be >= 1, got {num_prior_samples}")
        self.full = full
        self.num_prior_samples = num_prior_samples
        self.chunk_size = chunk_size

    def forward(self, samples: dict[str, Tensor], prior: Prior) -> Tensor:
        q = flatten_samples(samples)
        with torch.no_grad():
            p = prior.sample((self.num_prior_samples, q.shape[1]), device=q.device, dtype=q.dtype)
        if self.full:
            return nn_kl_full(q, p)
        return nn_kl_per_weight(q, p, chunk_size=self.chunk_size, compile=self.compile)

    def extra_repr(self) -> str:
        return f"full={self.full}, num_prior_samples={self.num_prior_samples}"



__all__ = ["DISTANCE_EPS", "NearestNeighbourKL", "nn_kl_full", "nn_kl_per_weight", "nn_kl_per_weight_reference"]
