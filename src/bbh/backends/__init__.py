"""bbh.backends."""
