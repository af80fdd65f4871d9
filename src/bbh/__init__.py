"""bbh — Bayes by Hypernet: hypernetworks as implicit weight posteriors for any PyTorch module.

Pawlowski, Brock, Lee, Rajchl, Glocker, "Implicit Weight Uncertainty in Neural Networks" (arXiv 1711.01297).

>>> import bbh
>>> model = bbh.models.MLP(1, 1, hidden=(100,))
>>> method = bbh.create("bbh", model, likelihood=bbh.likelihoods.Gaussian(9.0))
"""

from __future__ import annotations

import sys as _sys

from . import data, kl, models  # data: ~30 ms on top of torch's import
from .backends import native
from .core import elbo as _elbo_module
from .core import functional, io, likelihoods, options, priors, threads
from .core import metrics as _metrics
from .core import predictive as _predictive
from .core.elbo import ConstantWeight, LinearAnneal, LossTerms, ToyAnneal, elbo
from .core.options import Init, Layout, LikelihoodSamples, Noise, OptimizerName
from .core.predictive import Predictive, RegressionPredictive
from .core.priors import NormalPrior
from .evaluation.api import EvaluationResults, evaluate
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
from .training.trainer import NonFiniteLossError, Trainer

# The core modules under their public names: ``import bbh.likelihoods`` and ``bbh.likelihoods.Gaussian`` are
# bbh.core.likelihoods; bbh.evaluation.metrics / .predictive are bbh.core's (they sit below the methods).
for _name, _module in {"elbo": _elbo_module, "functional": functional, "io": io, "likelihoods": likelihoods,
                       "options": options, "priors": priors, "threads": threads,
                       "evaluation.metrics": _metrics, "evaluation.predictive": _predictive}.items():
    _sys.modules.setdefault(f"{__name__}.{_name}", _module)

__version__ = "0.1.0"

__all__ = [
    "MAP", "BayesByHypernet", "ConstantWeight", "EvaluationResults", "HypernetPosterior", "HypernetTooLargeError",
    "Init", "Layout",
    "LikelihoodSamples", "LinearAnneal", "LossTerms", "Method", "Noise", "NonFiniteInputError",
    "NonFiniteLossError", "NormalPrior", "OptimizerName", "Predictive", "RegressionPredictive", "ToyAnneal",
    "Trainer", "available_methods", "create", "data", "elbo", "evaluate", "kl", "likelihoods", "models", "native",
    "priors", "threads",
]
