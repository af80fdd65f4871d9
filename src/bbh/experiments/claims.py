"""Verdicts on the paper's claims, with their noise: what ``bbh reproduce`` writes under each table.

A claim's sentence is a conjunction of comparisons between measured rows ("BbH's error is below MAP's", "the
per-weight kernel's outlier AUC is closer to the analytic row's than AVB's"). Each :class:`Comparison` has a
signed ``margin`` (positive when the rows are ordered as the sentence says) and the standard error ``se`` of
that margin; it is decided only beyond 2 SE:

    holds  if margin >  2 SE,    fails  if margin < -2 SE,    undecided otherwise (a tie, margin 0, always).

The claim (:func:`all_of`) is **contradicted** if any comparison fails, **supported** if all hold, **not
distinguishable at this budget** if none fails and some are undecided, and **not measurable** if a value it
needs (or that value's noise) is missing. Equal values never decide anything, whatever the order of the rows.

Noise of one row's metric (:func:`standard_error`; rows are assumed independent, so two rows' SEs combine as
sqrt(se_1² + se_2²), which ignores the positive correlation of rows scored on the same test images and so
overstates the noise of a difference, never understates it):

* ``error_percent``: binomial, SE = 100 sqrt(p (1 - p) / n_test), p = error_percent / 100;
* ``auc_in`` / ``auc_out`` (the paper's entropy AUC, a mean over the examples of a term in [0, 1]): the stored
  ``auc_in_se`` / ``auc_out_se`` (std / sqrt(n) of those terms, :func:`bbh.core.metrics.entropy_auc_se`);
  for results written before that was stored, the Bhatia-Davis bound SE <= sqrt(a (1 - a) / n) (a term in [0, 1]
  with mean a has variance at most a (1 - a)), n = n_test / n_outliers: an upper bound;
* ``ood_auroc``: Hanley & McNeil (1982) from the two set sizes, n_1 = n_outliers (positives), n_0 = n_test:
  SE² = [A (1 - A) + (n_1 - 1)(Q_1 - A²) + (n_0 - 1)(Q_2 - A²)] / (n_1 n_0), Q_1 = A / (2 - A), Q_2 = 2A² / (1 + A);
* ``train_seconds``: one wall-clock timing per row, whose run-to-run noise no stored number measures; an
  *assumed* SE of :data:`TIMING_RELATIVE_SE` of the timing (machines running other work vary more than this);
* anything else (NLL, ECE): no noise estimate, so a claim about it reads "not measurable" (no claim uses them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Metrics = Mapping[str, Any]
Rows = Mapping[str, Metrics]
Outcome = Literal["supported", "contradicted", "not distinguishable", "not measurable"]

TIMING_RELATIVE_SE = 0.10
"""The assumed standard error of one training-time measurement, as a fraction of it (an assumption, not a
measurement: each row is timed once)."""

LABELS = {"error_percent": "error %", "auc_in": "AUC in", "auc_out": "AUC out", "ood_auroc": "OOD AUROC",
          "train_seconds": "train s", "nll": "NLL", "ece": "ECE"}
_DIGITS = {"error_percent": 2, "train_seconds": 0}


class Missing(LookupError):
    """A value a comparison needs (or its noise) is not in the rows."""


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def value(rows: Rows, key: str, metric: str) -> float:
    """Row ``key``'s ``metric``; raises :class:`Missing` when the row or the value is absent or not finite."""
    v = _finite(rows.get(key, {}).get(metric))
    if v is None:
        raise Missing(f"{key} {LABELS.get(metric, metric)}")
    return v


def standard_error(row: Metrics, metric: str) -> float | None:
    """The standard error of one row's ``metric`` (module docstring: binomial for the error, the stored
    per-example SE or the Bhatia-Davis bound for the entropy AUCs, Hanley-McNeil for the OOD AUROC, an assumed
    relative SE for training time); None where it cannot be estimated from the row."""
    v = _finite(row.get(metric))
    if v is None:
        return None
    n_test, n_out = _finite(row.get("n_test")), _finite(row.get("n_outliers"))
    if metric == "error_percent":
        if not n_test:
            return None
        p = min(max(v / 100, 0.0), 1.0)
        return 100 * math.sqrt(p * (1 - p) / n_test)
    if metric in ("auc_in", "auc_out"):
        stored = _finite(row.get(f"{metric}_se"))
        if stored is not None:
            return stored
        n = n_test if metric == "auc_in" else n_out
        if not n:
            return None
        a = min(max(v, 0.0), 1.0)
        return math.sqrt(a * (1 - a) / n)
    if metric == "ood_auroc":
        if not n_test or not n_out:
            return None
        a = v
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        var = (a * (1 - a) + (n_out - 1) * (q1 - a * a) + (n_test - 1) * (q2 - a * a)) / (n_out * n_test)
        return math.sqrt(max(var, 0.0))
    if metric == "train_seconds":
        return TIMING_RELATIVE_SE * abs(v)
    return None


def _se(rows: Rows, key: str, metric: str) -> float:
    se = standard_error(rows.get(key, {}), metric)
    if se is None:
        raise Missing(f"the noise of {key} {LABELS.get(metric, metric)}")
    return se


@dataclass(frozen=True)
class Comparison:
    """One comparison a sentence makes, measured.

    Attributes:
        what: the comparison in words (``bbh < map in error %``).
        margin: signed; positive when the rows are ordered as the sentence says.
        se: the standard error of ``margin``.
        digits: decimals to print.
    """

    what: str
    margin: float
    se: float
    digits: int = 3

    @property
    def holds(self) -> bool | None:
        """True if margin > 2 SE, False if margin < -2 SE, None inside (so a tie, margin 0, is always None)."""
        if self.margin > 2 * self.se:
            return True
        if self.margin < -2 * self.se:
            return False
        return None

    def describe(self) -> str:
        tie = ", a tie" if self.margin == 0 else ""
        return f"{self.what}: margin {self.margin:.{self.digits}f}{tie}, 2 SE = {2 * self.se:.{self.digits}f}"


Part = Callable[[Rows], Comparison]
"""A comparison to make on the rows (raises :class:`Missing` when it cannot)."""


def below(metric: str, low: str, high: str) -> Part:
    """"``low``'s ``metric`` is below ``high``'s": margin = v_high - v_low, SE = sqrt(se_low² + se_high²)."""
    def compare(rows: Rows) -> Comparison:
        margin = value(rows, high, metric) - value(rows, low, metric)
        se = math.hypot(_se(rows, low, metric), _se(rows, high, metric))
        return Comparison(f"{low} < {high} in {LABELS.get(metric, metric)}", margin, se,
                          _DIGITS.get(metric, 3))
    return compare


def closer(metric: str, ref: str, near: str, far: str) -> Part:
    """"``near``'s ``metric`` is closer to ``ref``'s than ``far``'s is": margin = |v_far - v_ref| - |v_near - v_ref|.

    SE = sqrt(se_near² + se_far² + 4 se_ref²): an upper bound (the shared ``ref`` cancels when ``near`` and
    ``far`` lie on the same side of it, and counts twice when on opposite sides).
    """
    def compare(rows: Rows) -> Comparison:
        r = value(rows, ref, metric)
        margin = abs(value(rows, far, metric) - r) - abs(value(rows, near, metric) - r)
        se = math.sqrt(_se(rows, near, metric) ** 2 + _se(rows, far, metric) ** 2 + 4 * _se(rows, ref, metric) ** 2)
        return Comparison(f"{near} closer to {ref} than {far} in {LABELS.get(metric, metric)}", margin, se,
                          _DIGITS.get(metric, 3))
    return compare


@dataclass(frozen=True)
class Verdict:
    """A claim's outcome and the comparisons that decide it (the failing ones if contradicted, the undecided
    ones if not distinguishable, the weakest one if supported), or what is missing."""

    outcome: Outcome
    deciding: tuple[Comparison, ...] = ()
    missing: tuple[str, ...] = ()

    def text(self) -> str:
        """``supported (...)``, ``**contradicted** (...)``, ``not distinguishable at this budget (...)`` or
        ``not measurable (missing: ...)``, each with the margins and 2 SE that decide it."""
        detail = "; ".join(c.describe() for c in self.deciding)
        if self.outcome == "not measurable":
            return f"not measurable (missing: {', '.join(self.missing)})"
        word = {"supported": "supported", "contradicted": "**contradicted**",
                "not distinguishable": "not distinguishable at this budget"}[self.outcome]
        return f"{word} ({detail})"


def judge(comparisons: Sequence[Comparison]) -> Verdict:
    """The verdict on a conjunction of comparisons (module docstring)."""
    failing = tuple(c for c in comparisons if c.holds is False)
    if failing:
        return Verdict("contradicted", failing)
    undecided = tuple(c for c in comparisons if c.holds is None)
    if undecided:
        return Verdict("not distinguishable", undecided)
    weakest = min(comparisons, key=lambda c: c.margin / c.se if c.se > 0 else math.inf)
    return Verdict("supported", (weakest,))


def all_of(*parts: Part) -> Callable[[Rows], Verdict]:
    """A claim that every one of ``parts`` holds: :func:`judge` of them, or "not measurable" with what is
    missing."""
    def check(rows: Rows) -> Verdict:
        made: list[Comparison] = []
        missing: list[str] = []
        for part in parts:
            try:
                made.append(part(rows))
            except Missing as e:
                missing.append(str(e.args[0]))
        return Verdict("not measurable", missing=tuple(dict.fromkeys(missing))) if missing else judge(made)
    return check


__all__ = ["Comparison", "LABELS", "Missing", "TIMING_RELATIVE_SE", "Verdict", "all_of", "below", "closer", "judge",
           "standard_error", "value"]
