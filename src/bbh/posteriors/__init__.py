"""The methods, all behind the one door: :class:`~bbh.posteriors.protocol.Method` (the protocol and its
declared capabilities) and :func:`~bbh.posteriors.factory.create` (build any method by name)."""

from .bbb import BayesByBackprop
from .dropout import MCDropout
from .ensemble import DeepEnsemble
from .factory import available_methods, create, register
from .hypernet import BayesByHypernet, HypernetPosterior
from .laplace import LastLayerLaplace, fit_last_layer_laplace
from .mnf import MNF
from .point import MAP
from .protocol import Method, select_parameters
from .rank1 import Rank1Posterior
from .sizing import HypernetSize, HypernetTooLargeError

__all__ = ["MAP", "MNF", "BayesByBackprop", "BayesByHypernet", "DeepEnsemble", "HypernetPosterior",
           "HypernetSize", "HypernetTooLargeError", "LastLayerLaplace", "MCDropout", "Method", "Rank1Posterior",
           "available_methods", "create", "fit_last_layer_laplace",
           "register", "select_parameters"]
