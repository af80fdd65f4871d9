"""KL(q || p) estimators behind one interface (:class:`KLEstimator`): the analytic Gaussian KL, the
nearest-neighbour estimator of paper Eq. 2 (per weight or on whole vectors), and the adversarial
discriminator of Appendix A; :func:`make_kl_estimator` builds one by name."""

from .adversarial import AdversarialKL
from .analytic import gaussian_kl
from .base import KLEstimator, flatten_samples
from .factory import KL_ESTIMATORS, make_kl_estimator
from .nearest import (
    DISTANCE_EPS,
    NearestNeighbourKL,
    nn_kl_full,
    nn_kl_per_weight,
    nn_kl_per_weight_reference,
)

__all__ = [
    "DISTANCE_EPS", "KLEstimator", "KL_ESTIMATORS", "AdversarialKL", "NearestNeighbourKL", "flatten_samples",
    "gaussian_kl", "make_kl_estimator", "nn_kl_full", "nn_kl_per_weight", "nn_kl_per_weight_reference",
]
