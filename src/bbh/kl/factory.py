"""Build a KL estimator by name (``kl="nn-per-weight" | "nn-full" | "adversarial"``) or pass one through."""

from __future__ import annotations

from .adversarial import AdversarialKL
from .base import KLEstimator
from .nearest import NearestNeighbourKL

KL_ESTIMATORS = ("nn-per-weight", "nn-full", "adversarial")


def make_kl_estimator(kl: str | KLEstimator, num_prior_samples: int = 5) -> KLEstimator:
    """Build a sample-based estimator by name (``"nn-per-weight"``, ``"nn-full"``, ``"adversarial"`` — the
    :class:`~bbh.kl.adversarial.AdversarialKL` with its defaults) or pass one through."""
    if isinstance(kl, KLEstimator):
        return kl
    if kl == "nn-per-weight":
        return NearestNeighbourKL(full=False, num_prior_samples=num_prior_samples)
    if kl == "nn-full":
        return NearestNeighbourKL(full=True, num_prior_samples=num_prior_samples)
    if kl == "adversarial":
        return AdversarialKL()
    valid = ", ".join(repr(k) for k in KL_ESTIMATORS)
    raise ValueError(f"unknown kl {kl!r}; expected one of {valid} or a KLEstimator instance")



__all__ = ["KL_ESTIMATORS", "make_kl_estimator"]
