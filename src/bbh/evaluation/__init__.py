"""bbh.evaluation."""
