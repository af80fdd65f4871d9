"""How bbh's Markdown reports write numbers: one rule for every table (runs, comparisons, UCI, reproduction)."""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"
"""What a table shows for a value that is absent, NaN or infinite."""


def number(value: Any, digits: int = 3, grouping: bool = False) -> str:
    """``value`` with ``digits`` decimals (thousands separated by commas with ``grouping``); :data:`MISSING` for
    None, NaN and ±inf; anything that is not a number as ``str``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:{',' if grouping else ''}.{digits}f}"
    return str(value)


def mean_se(entry: dict[str, Any] | None, digits: int = 2) -> str:
    """``"mean ± se"`` of a ``{"mean", "se"}`` entry (:data:`MISSING` for None)."""
    if entry is None:
        return MISSING
    return f"{number(entry['mean'], digits)} ± {number(entry['se'], digits)}"
