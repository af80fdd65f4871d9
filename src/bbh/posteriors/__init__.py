"""Variational families and point estimates, all behind the :class:`~bbh.posteriors.base.Method` protocol."""

from .bbb import BayesByBackprop
from .dropout import MCDropout
from .ensemble import DeepEnsemble
from .hypernet import BayesByHypernet, HypernetPosterior
from .mnf import MNF
from .point import MAP
from .protocol import Method, available_methods, create, register, select_parameters

__all__ = ["MAP", "MNF", "BayesByBackprop", "BayesByHypernet", "DeepEnsemble", "HypernetPosterior", "MCDropout",
           "Method", "available_methods", "create", "register", "select_parameters"]
