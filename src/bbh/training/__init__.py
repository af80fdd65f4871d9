"""bbh.training."""
