"""The files of a run directory, named once.

The Trainer writes :data:`CHECKPOINT` and :data:`METRICS`; ``bbh train`` (:mod:`bbh.experiments.run`) adds
:data:`CONFIG`, :data:`STATUS`, :data:`MODEL` and :data:`FINAL`; ``bbh evaluate`` writes :data:`RESULTS` and
:data:`REPORT` (and its figures) under :data:`EVAL`. Everything that reads or writes a run directory takes the
names from here.
"""

from __future__ import annotations

CHECKPOINT = "checkpoint.pt"
"""The Trainer's full state: method, optimizer, data order, random states (exact resume)."""
METRICS = "metrics.jsonl"
"""One JSON line per finished epoch: the mean loss terms, seconds."""
CONFIG = "config.toml"
"""The resolved configuration of a ``bbh train`` run."""
STATUS = "status.json"
"""Where the run stands: running, interrupted, failed or finished, with its data folder."""
MODEL = "model.pt"
"""The trained method's state only (no optimizer state): what evaluation loads."""
FINAL = "final.json"
"""The finished run's test accuracy and NLL."""
EVAL = "eval"
"""The folder ``bbh evaluate`` writes into."""
RESULTS = "results.json"
"""An evaluation's numbers (strict JSON), in :data:`EVAL`."""
REPORT = "report.md"
"""An evaluation's tables and figures, in :data:`EVAL`."""

__all__ = ["CHECKPOINT", "CONFIG", "EVAL", "FINAL", "METRICS", "MODEL", "REPORT", "RESULTS", "STATUS"]
