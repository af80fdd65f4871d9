"""bbh.reference."""
