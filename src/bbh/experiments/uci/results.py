"""Cells -> per dataset and method tables: mean ± SE over splits, paired differences to HMC, merging runs."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

from ...reports.uci import CHOICES
from .settings import REFERENCE_METHODS


def mean_se(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "se", "per_split"}``: the mean and its standard error std(ddof=1) / sqrt(n) (0 for n = 1)."""
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0
    return {"mean": mean, "se": se, "per_split": list(values)}

def aggregate(cells: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dataset and method: ``test_ll`` and ``rmse`` as :func:`mean_se` over splits (in split order),
    ``std_over_rmse`` (the root mean predictive variance over the squared error, sqrt(mean(aleatoric + epistemic
    variance)) / RMSE, per split: 1 for a predictive as wide as its errors, > 1 over-dispersed, < 1
    over-confident), ``n_splits``, ``seconds`` (total wall time of the cells), ``failed_splits`` (cells whose
    training diverged, left out of the means); where the HMC reference ran, every method's
    ``test_ll_minus_hmc``: the paired difference of test LL on the splits both ran, as :func:`mean_se` (and
    ``test_ll_minus_nuts`` where NUTS ran)."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for c in cells:
        grouped.setdefault(c["dataset"], {}).setdefault(c["method"], []).append(c)
    table: dict[str, dict[str, Any]] = {}
    for name, methods in grouped.items():
        for method, records in methods.items():
            failed = sorted(r["split"] for r in records if "failed" in r)
            records = sorted((r for r in records if "failed" not in r), key=lambda r: r["split"])
            if not records:
                table.setdefault(name, {})[method] = {"n_splits": 0, "splits": [], "failed_splits": failed,
                                                      "seconds": 0.0}
                continue
            entry = {"test_ll": mean_se([r["test_ll"] for r in records]), "rmse": mean_se([r["rmse"] for r in records]),
                     "std_over_rmse": mean_se([math.hypot(r["noise_std"], r["epistemic_std"]) / r["rmse"]
                                               for r in records]),
                     "failed_splits": failed, "n_splits": len(records), "splits": [r["split"] for r in records],
                     "seconds": sum(r["seconds"] for r in records)}
            for key in CHOICES:
                chosen = [r[key] for r in records if key in r]
                if chosen:
                    entry[key] = {str(v): chosen.count(v) for v in sorted(set(chosen))}
            edges = [r["length_at_edge"] for r in records if "length_at_edge" in r]
            if edges:
                entry["lengths_at_edge"] = sum(edges)
            if method in REFERENCE_METHODS and all("diagnostics" in r for r in records):
                diagnostics = [r["diagnostics"] for r in records]
                entry["rhat_f_max"] = max(d["rhat_f_max"] for d in diagnostics)
                entry["rhat_f_median"] = sorted(d["rhat_f_median"] for d in diagnostics)[len(diagnostics) // 2]
                entry["ess_f_min"] = min(d["ess_f_min"] for d in diagnostics)
                entry["divergences"] = sum(sum(d["divergences"]) for d in diagnostics)
                if all("meets_bar" in d for d in diagnostics):
                    entry["splits_meeting_bar"] = sum(bool(d["meets_bar"]) for d in diagnostics)
            table.setdefault(name, {})[method] = entry
    _pair_with_references(table)
    return table

def _pair_with_references(table: dict[str, dict[str, Any]]) -> None:
    """Set every method's ``test_ll_minus_<reference>`` (in place) on the datasets where that reference ran
    (:data:`REFERENCE_METHODS`): the paired difference of test LL over the splits both ran."""
    for methods in table.values():
        for ref_name in REFERENCE_METHODS:
            reference = methods.get(ref_name)
            if reference is None or not reference["splits"]:
                continue
            ref = dict(zip(reference["splits"], reference["test_ll"]["per_split"]))
            for method, entry in methods.items():
                shared = [k for k in entry.get("splits", []) if k in ref and method != ref_name]
                if shared:
                    own = dict(zip(entry["splits"], entry["test_ll"]["per_split"]))
                    entry[f"test_ll_minus_{ref_name}"] = {**mean_se([own[k] - ref[k] for k in shared]),
                                                          "splits": shared}


def merge_results(own: dict[str, Any], other: dict[str, Any], methods: Sequence[str],
                  source: str = "") -> dict[str, Any]:
    """``own`` (a run's results) with every method not in ``methods`` taken from ``other`` (an earlier run's
    ``results.json``): the way to rerun one method whose setting changed and tabulate it beside the others' earlier
    cells without retraining them. The paired differences to HMC are recomputed; ``merged`` records which methods
    came from where (``source``), and the report says so.

    Raises:
        ValueError: ``other`` was made with another split kind or budget, or is not a results file.
    """
    if not (isinstance(other, dict) and isinstance(other.get("datasets"), dict)
            and isinstance(other.get("settings"), dict)):
        raise ValueError(f"{source or 'the merged results'}: not a bbh uci results.json (no datasets / settings)")
    for key in ("split_kind", "budget"):
        if other.get(key) != own[key]:
            raise ValueError(f"{source or 'the merged results'} has {key} {other.get(key)!r}, this run "
                             f"{own[key]!r}: results of different protocols do not go in one table")
    merged = copy.deepcopy(own)
    taken: set[str] = set()
    for name, entries in other["datasets"].items():
        for method, entry in entries.items():
            if method not in methods:
                merged["datasets"].setdefault(name, {})[method] = copy.deepcopy(entry)
                merged["n_cells"] += entry.get("n_splits", 0) + len(entry.get("failed_splits", []))
                merged["seconds"] += entry.get("seconds", 0.0)
                taken.add(method)
    merged["settings"] = {**{m: v for m, v in other["settings"].items() if m in taken}, **own["settings"]}
    _pair_with_references(merged["datasets"])
    merged["merged"] = {"source": source, "methods": sorted(taken)}
    return merged
