"""The paper's experiments as runnable functions."""
