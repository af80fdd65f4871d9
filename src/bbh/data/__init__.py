"""Data sets: the toy regression (real-data loaders come with the pipeline)."""

from .batches import MemberBatches
from .toy import make_toy_data, toy_function, toy_grid

__all__ = ["MemberBatches", "make_toy_data", "toy_function", "toy_grid"]
