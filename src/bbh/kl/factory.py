"""Build a KL estimator by name (``kl="nn-per-weight" | "nn-full" | "nn-entropy" | "nn-entropy-per-weight" |
"semi-implicit" | "stein" | "adversarial"``) or pass one through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.options import KLName, choices, parse_option
from .adversarial import AdversarialKL
from .base import KLEstimator
from .entropy import EntropyKL
from .nearest import NearestNeighbourKL
from .semi_implicit import SemiImplicitKL
from .stein import SteinKL

KL_ESTIMATORS = choices(KLName)


def make_kl_estimator(kl: str | KLEstimator, num_prior_samples: int = 5,
                      options: Mapping[str, Any] | None = None) -> KLEstimator:
    """Build a sample-based estimator by name or pass one through.

    ``"nn-per-weight"`` / ``"nn-full"``: paper Eq. 2 (:class:`~bbh.kl.nearest.NearestNeighbourKL`, m =
    ``num_prior_samples`` prior samples per call); ``"nn-entropy"`` / ``"nn-entropy-per-weight"``: minus the
    Kozachenko–Leonenko entropy (5th neighbour, at most n - 1) plus the exact cross-entropy to the prior
    (:class:`~bbh.kl.entropy.EntropyKL`, needs a prior with ``log_prob``; draws no prior samples);
    ``"semi-implicit"``: the SIVI entropy bound plus the exact cross-entropy
    (:class:`~bbh.kl.semi_implicit.SemiImplicitKL`, needs a posterior with a Gaussian layer and a prior with
    ``log_prob``);
    ``"stein"``: the exact cross-entropy minus an entropy whose gradient is the spectral Stein gradient estimate
    (:class:`~bbh.kl.stein.SteinKL`, Shi, Sun & Zhu 2018; needs a prior with ``log_prob``);
    ``"adversarial"``: the :class:`~bbh.kl.adversarial.AdversarialKL`, with its defaults or ``options`` (its
    keyword arguments: ``pretrain_steps``, ``steps_per_update``, ``max_weights``, ...). ``options`` apply to the
    adversarial estimator only; the others have none."""
    if options and kl != "adversarial":
        raise ValueError(f"kl options {dict(options)} apply to kl='adversarial' only, not {kl!r}")
    if isinstance(kl, KLEstimator):
        return kl
    try:
        kl = parse_option(KLName, kl, "kl").value
    except ValueError as error:
        raise ValueError(f"{error}, or a KLEstimator instance") from None
    if kl == "nn-per-weight":
        return NearestNeighbourKL(full=False, num_prior_samples=num_prior_samples)
    if kl == "nn-full":
        return NearestNeighbourKL(full=True, num_prior_samples=num_prior_samples)
    if kl == "nn-entropy":
        return EntropyKL(full=True, k=5)
    if kl == "nn-entropy-per-weight":
        return EntropyKL(full=False, k=5)
    if kl == "semi-implicit":
        return SemiImplicitKL()
    if kl == "stein":
        return SteinKL()
    if kl == "adversarial":
        try:
            return AdversarialKL(**dict(options or {}))
        except TypeError as err:
            raise ValueError(f"bad kl options {dict(options or {})} for 'adversarial': {err}") from err
    raise AssertionError(f"KLName {kl!r} has no builder here")  # a new member of the enum without a branch



__all__ = ["KL_ESTIMATORS", "make_kl_estimator"]
