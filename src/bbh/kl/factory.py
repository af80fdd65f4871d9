"""Build a KL estimator by name (``kl="nn-per-weight" | "nn-full" | "nn-entropy" | "nn-entropy-per-weight" |
"adversarial"``) or pass one through."""

from __future__ import annotations

from .adversarial import AdversarialKL
from .base import KLEstimator
from .entropy import EntropyKL
from .nearest import NearestNeighbourKL

KL_ESTIMATORS = ("nn-per-weight", "nn-full", "nn-entropy", "nn-entropy-per-weight", "adversarial")


def make_kl_estimator(kl: str | KLEstimator, num_prior_samples: int = 5) -> KLEstimator:
    """Build a sample-based estimator by name or pass one through.

    ``"nn-per-weight"`` / ``"nn-full"``: paper Eq. 2 (:class:`~bbh.kl.nearest.NearestNeighbourKL`, m =
    ``num_prior_samples`` prior samples per call); ``"nn-entropy"`` / ``"nn-entropy-per-weight"``: minus the
    Kozachenko–Leonenko entropy (5th neighbour, at most n - 1) plus the exact cross-entropy to the prior
    (:class:`~bbh.kl.entropy.EntropyKL`, needs a prior with ``log_prob``; draws no prior samples);
    ``"adversarial"``: the :class:`~bbh.kl.adversarial.AdversarialKL` with its defaults."""
    if isinstance(kl, KLEstimator):
        return kl
    if kl == "nn-per-weight":
        return NearestNeighbourKL(full=False, num_prior_samples=num_prior_samples)
    if kl == "nn-full":
        return NearestNeighbourKL(full=True, num_prior_samples=num_prior_samples)
    if kl == "nn-entropy":
        return EntropyKL(full=True, k=5)
    if kl == "nn-entropy-per-weight":
        return EntropyKL(full=False, k=5)
    if kl == "adversarial":
        return AdversarialKL()
    valid = ", ".join(repr(k) for k in KL_ESTIMATORS)
    raise ValueError(f"unknown kl {kl!r}; expected one of {valid} or a KLEstimator instance")



__all__ = ["KL_ESTIMATORS", "make_kl_estimator"]
