"""bbh.reports."""
