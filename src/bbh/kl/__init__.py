"""KL(q || p) estimators behind one interface (:class:`KLEstimator`): the analytic Gaussian KL, the
nearest-neighbour estimator of paper Eq. 2 (per weight or on whole vectors), and the adversarial
discriminator of Appendix A, minus a Kozachenko–Leonenko entropy estimate plus the exact cross-entropy
(:class:`EntropyKL`), and the semi-implicit (SIVI) entropy bound plus the exact cross-entropy
(:class:`SemiImplicitKL`), and the exact cross-entropy with a spectral Stein entropy gradient (:class:`SteinKL`);
:func:`make_kl_estimator` builds one by name."""

from .adversarial import AdversarialKL
from .analytic import gaussian_kl
from .base import GaussianLayer, KLEstimator, estimate_kl, flatten_samples
from .entropy import EntropyKL, entropy_kl, knn_entropy_full, knn_entropy_per_weight
from .factory import KL_ESTIMATORS, make_kl_estimator
from .nearest import (
    DISTANCE_EPS,
    NearestNeighbourKL,
    nn_kl_full,
    nn_kl_per_weight,
    nn_kl_per_weight_reference,
)
from .semi_implicit import SemiImplicitKL, semi_implicit_entropy
from .stein import SteinKL, ssge_score

__all__ = [
    "AdversarialKL",
    "DISTANCE_EPS",
    "EntropyKL",
    "GaussianLayer",
    "KLEstimator",
    "KL_ESTIMATORS",
    "NearestNeighbourKL",
    "SemiImplicitKL",
    "SteinKL",
    "entropy_kl",
    "estimate_kl",
    "flatten_samples",
    "gaussian_kl",
    "knn_entropy_full",
    "knn_entropy_per_weight",
    "make_kl_estimator",
    "nn_kl_full",
    "nn_kl_per_weight",
    "nn_kl_per_weight_reference",
    "semi_implicit_entropy",
    "ssge_score",
]
