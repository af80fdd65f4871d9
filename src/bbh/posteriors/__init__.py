"""Variational families and point estimates, all behind the :class:`~bbh.posteriors.base.Method` protocol."""

from .base import Method, available_methods, create, register, select_parameters
from .hypernet import BayesByHypernet, HypernetPosterior
from .point import MAP

__all__ = ["MAP", "BayesByHypernet", "HypernetPosterior", "Method", "available_methods", "create", "register",
           "select_parameters"]
