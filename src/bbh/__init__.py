"""bbh — Bayes by Hypernet: hypernetworks as implicit weight posteriors for any PyTorch module.

Pawlowski, Brock, Lee, Rajchl, Glocker, "Implicit Weight Uncertainty in Neural Networks" (arXiv 1711.01297).

>>> import bbh
>>> model = bbh.models.MLP(1, 1, hidden=(100,))
>>> method = bbh.create("bbh", model, likelihood=bbh.likelihoods.Gaussian(9.0))
"""

from __future__ import annotations

from . import (  # noqa: E402
    kl,  # noqa: E402
    likelihoods,
    models,
    priors,
)
from .backends import native  # noqa: E402
from .elbo import ConstantWeight, LinearAnneal, LossTerms, ToyAnneal, elbo  # noqa: E402
from .evaluation.api import evaluate  # noqa: E402
from .options import Init, Layout, LikelihoodSamples, Noise, OptimizerName  # noqa: E402
from .posteriors import MAP, BayesByHypernet, HypernetPosterior, Method, available_methods, create  # noqa: E402
from .priors import NormalPrior  # noqa: E402
from .training.trainer import NonFiniteLossError, Trainer  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "MAP", "BayesByHypernet", "ConstantWeight", "HypernetPosterior", "Init", "Layout", "LikelihoodSamples",
    "LinearAnneal", "LossTerms", "Method", "Noise", "NonFiniteLossError", "NormalPrior", "OptimizerName",
    "ToyAnneal", "Trainer", "available_methods", "create", "elbo", "evaluate", "kl", "likelihoods", "models", "native",
    "priors",
]
