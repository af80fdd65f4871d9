"""bbh — Bayes by Hypernet: hypernetworks as implicit weight posteriors for any PyTorch module.

Pawlowski, Brock, Lee, Rajchl, Glocker, "Implicit Weight Uncertainty in Neural Networks" (arXiv 1711.01297).

>>> import bbh
>>> model = bbh.models.MLP(1, 1, hidden=(100,))
>>> method = bbh.create("bbh", model, likelihood=bbh.likelihoods.Gaussian(9.0))
"""

from __future__ import annotations

from . import data, kl, likelihoods, models, priors, threads  # data: ~30 ms on top of torch's import
from .backends import native
from .elbo import ConstantWeight, LinearAnneal, LossTerms, ToyAnneal, elbo
from .evaluation.api import EvaluationResults, evaluate
from .evaluation.predictive import Predictive, RegressionPredictive
from .options import Init, Layout, LikelihoodSamples, Noise, OptimizerName
from .posteriors import (
    MAP,
    BayesByHypernet,
    HypernetPosterior,
    HypernetTooLargeError,
    Method,
    available_methods,
    create,
)
from .posteriors.protocol import NonFiniteInputError
from .priors import NormalPrior
from .training.trainer import NonFiniteLossError, Trainer

__version__ = "0.1.0"

__all__ = [
    "MAP", "BayesByHypernet", "ConstantWeight", "EvaluationResults", "HypernetPosterior", "HypernetTooLargeError",
    "Init", "Layout",
    "LikelihoodSamples", "LinearAnneal", "LossTerms", "Method", "Noise", "NonFiniteInputError",
    "NonFiniteLossError", "NormalPrior", "OptimizerName", "Predictive", "RegressionPredictive", "ToyAnneal",
    "Trainer", "available_methods", "create", "data", "elbo", "evaluate", "kl", "likelihoods", "models", "native",
    "priors", "threads",
]
