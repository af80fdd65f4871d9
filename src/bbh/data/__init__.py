"""Data sets: the toy regression (real-data loaders come with the pipeline)."""

from .toy import make_toy_data, toy_function, toy_grid

__all__ = ["make_toy_data", "toy_function", "toy_grid"]
