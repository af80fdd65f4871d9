"""Variational families and point estimates, all behind the :class:`~bbh.posteriors.base.Method` protocol."""

from .base import Method, available_methods, create, register, select_parameters
from .bbb import BayesByBackprop
from .dropout import MCDropout
from .ensemble import DeepEnsemble
from .hypernet import BayesByHypernet, HypernetPosterior
from .mnf import MNF
from .point import MAP

__all__ = ["MAP", "MNF", "BayesByBackprop", "BayesByHypernet", "DeepEnsemble", "HypernetPosterior", "MCDropout",
           "Method", "available_methods", "create", "register", "select_parameters"]
