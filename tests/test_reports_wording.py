"""Reports that say what they mean (issue 25, item 5); each test fails on the wording it replaced.

* the toy table: the comparison with HMC first, the distance to x^3 labelled as such and said not to rank;
* point estimates (one draw, or identical draws): no mutual-information OOD row or MI column;
* the UCI report: one split as "(n = 1)", the budget in words, "1 cell", the summed cell time labelled.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_blobs
from torch import nn

import bbh
import bbh.experiments.toy as toy_mod
from bbh.cli import main
from bbh.core.predictive import Predictive
from bbh.evaluation.api import has_epistemic_spread
from bbh.experiments.uci import BUDGETS, mean_se, render_report
from bbh.reports.runs import _report, results_record

# ---- the toy table -----------------------------------------------------------------------------------------

TOY = {"methods": {"bbh": {"std_inside": 4.42, "std_outside": 11.53, "rmse": 60.9, "train_seconds": 8.0,
                           "std_ratio_inside": 1.11, "std_ratio_outside": 1.13},
                   "map": {"std_inside": 0.0, "std_outside": 0.0, "rmse": 41.0, "train_seconds": 0.3,
                           "std_ratio_inside": 0.0, "std_ratio_outside": 0.0}},
       "hmc": {"std_inside": 3.99, "std_outside": 10.24, "rmse": 61.5, "seconds": 14.0, "cached": True}}


def test_bbh_toy_prints_the_hmc_comparison_first_and_labels_the_distance_to_x3(tmp_path: Path, monkeypatch,
                                                                              capsys) -> None:
    monkeypatch.setattr(toy_mod, "run_toy", lambda out, **kwargs: TOY)
    assert main(["toy", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0].split()
    assert "RMSE" not in header  # the old first column, read as a quality ranking
    assert printed.splitlines()[0].index("std/HMC in") < printed.splitlines()[0].index("mean-to-x^3 RMS")
    assert header[:3] == ["method", "std/HMC", "in"]
    flat = " ".join(printed.split())
    assert "This is the comparison that ranks the methods." in flat
    assert "distance of the predictive mean to the noise-free x^3 on [-6, 6]; not a quality ranking" in flat
    assert "(HMC's own: 61.5)" in flat
    rows = {line.split()[0]: line.split() for line in printed.splitlines()[1:4]}
    assert rows["map"][1:3] == ["0.00", "0.00"] and rows["map"][5] == "41.0"
    assert rows["hmc"][1:3] == ["1", "1"] and "(reference, cached)" in printed


def test_toy_table_without_hmc_has_no_ratio_columns_and_says_so() -> None:
    report = {"methods": {m: {k: v for k, v in s.items() if "ratio" not in k} for m, s in TOY["methods"].items()}}
    text = toy_mod.render_table(report)
    assert "std/HMC" not in text.splitlines()[0] and "No HMC reference (--no-hmc)" in text
    assert "HMC's own" not in text and "not a quality ranking" in " ".join(text.split())


# ---- point estimates: no mutual-information rows --------------------------------------------------------------

@pytest.mark.parametrize("name, spread", [("map", False), ("mc-dropout", True)])
def test_mutual_information_row_only_where_draws_disagree(name: str, spread: bool, tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    method = bbh.create(name, model)  # untrained: MC-Dropout's draws differ anyway
    x, y = make_blobs(n=40, classes=3, seed=1)
    far = 20 * torch.randn(30, 2)
    res = bbh.evaluate(method, (x, y), ood={"outliers": far}, n_samples=8, seed=0)
    assert ("mutual_information" in res.ood["outliers"].detection) is spread
    assert {"entropy", "max_prob"} <= set(res.ood["outliers"].detection)
    record = results_record(res, f"fake-{name}", "mnist", {"experiment": {"method": name}}, tmp_path)
    json.dumps(record, allow_nan=False)
    text = _report(record)
    assert ("| mutual_information |" in text) is spread
    assert ("No mutual information (MI): with one posterior draw per prediction (a point estimate)" in text) is (
        not spread)
    test_row = next(line for line in text.splitlines() if line.startswith("| test |"))
    assert test_row.endswith("| — |") is (not spread)


def test_an_old_map_results_file_loses_its_mi_row_too() -> None:
    """A results.json written before the change (MAP with an MI row, AUROC 0.5, FPR 1) is reported without it."""
    metrics = {"auroc": 0.5, "aupr_in": 0.5, "aupr_out": 0.5, "fpr_at_95_tpr": 1.0}
    test = {"error_percent": 1.0, "nll": 0.1, "brier": 0.1, "ece": 0.01, "entropy_auc": 0.9, "mean_entropy": 0.1,
            "mean_mutual_information": 0.0}
    record = {"run": "old-map", "method": "map", "task": "mnist", "samples": 1, "test": test,
              "outliers": {"entropy_auc": 0.5, "mean_entropy": 0.4, "mean_mutual_information": 0.0},
              "ood": {"entropy": metrics, "mutual_information": metrics, "max_prob": metrics}}
    text = _report(record)
    assert "| mutual_information |" not in text and "| entropy |" in text and "| max_prob |" in text


def test_identical_draws_have_no_epistemic_spread() -> None:
    probs = torch.softmax(3 * torch.randn(1, 500, 100), -1)
    same = Predictive(probs.expand(33, -1, -1).contiguous()).summary()
    assert not has_epistemic_spread(33, same)  # rounding leaves a trace (~1e-6 nats), which is not spread
    assert not has_epistemic_spread(1, Predictive(probs).summary())
    varied = Predictive(torch.softmax(3 * torch.randn(33, 500, 100), -1)).summary()
    assert has_epistemic_spread(33, same, varied)


# ---- the UCI report ------------------------------------------------------------------------------------------

def _entry(test_ll: list[float]) -> dict[str, Any]:
    return {"test_ll": mean_se(test_ll), "rmse": mean_se([5.0 + v for v in test_ll]),
            "std_over_rmse": mean_se([1.0 + 0.1 * k for k in range(len(test_ll))]), "n_splits": len(test_ll),
            "splits": list(range(len(test_ll))), "failed_splits": [], "seconds": 30.0 * len(test_ll)}


def _results(n_cells: int, missing: int = 0) -> dict[str, Any]:
    return {"split_kind": "standard", "budget_name": "quick", "budget": asdict(BUDGETS["quick"]),
            "datasets": {"concrete": {"map": _entry([-3.2]), "bbh": _entry([-3.1, -3.0])}}, "settings": {},
            "seconds": 90.0, "n_cells": n_cells, "missing_cells": missing}


def test_uci_report_one_split_is_n_1_not_plus_minus_zero() -> None:
    text = render_report(_results(3))
    assert "± 0.00" not in text and "± 0.000" not in text
    assert "| concrete | -3.20 (n = 1) | -3.05 ± 0.05 |" in text
    assert "| concrete | 1.800 (n = 1) | 1.950 ± 0.050 |" in text


def test_uci_report_budget_in_words_cells_counted_and_time_labelled() -> None:
    text = render_report(_results(1, missing=1))
    assert "{'splits'" not in text and "min_steps" not in text  # no raw dict
    assert ("Budget: the first 2 splits of each dataset, 600–1,200 training steps per cell (a method that chooses "
            "its length on validation: multiples of 600), 50 predictive draws; HMC on at most 1 split, its chains "
            "at 0.25x length.") in text
    assert "1 cell finished, 1 cell of the grid not run yet" in text and "1 cells" not in text
    assert "1.5 min is the sum of the finished cells' wall times, not the command's" in text
    assert "Wall time of the finished cells" not in text
    assert "3 cells finished, 4 cells of the grid not run yet" in render_report(_results(3, missing=4))
    full = render_report({**_results(2), "budget": asdict(BUDGETS["full"])})
    assert "Budget: every split of each dataset, 4,000–8,000 training steps" in full
