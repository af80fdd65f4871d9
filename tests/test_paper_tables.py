"""The paper's claims as ``bbh reproduce`` checks them (:mod:`bbh.experiments.paper_tables`,
:mod:`bbh.experiments.claims`): every claim on rows where its sentence is true, false, and true or false only
inside the noise; ties; the noise of each metric; the verdict text. Hand-made rows only, nothing is trained."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bbh.experiments.claims import TIMING_RELATIVE_SE, Comparison, all_of, below, closer, judge, standard_error
from bbh.experiments.paper_tables import TABLES
from bbh.experiments.reproduce import BUDGETS, noise_statement, render_table, row_metrics

N = 2_000  # test images and outliers (the cpu budget's MNIST)
Rows = dict[str, dict[str, Any]]


def rows(values: dict[str, dict[str, float]], n: int = N) -> Rows:
    """``{row: {metric: value}}`` with ``n`` test images and ``n`` outliers per row (entropy AUC SEs not stored:
    the Bhatia-Davis bound is used)."""
    return {k: {**m, "n_test": n, "n_outliers": n} for k, m in values.items()}


def one(metric: str, **values: float) -> Rows:
    """Rows with one metric; row keys with '-' are passed as '_' (``mc_dropout`` -> ``mc-dropout``)."""
    return rows({k.replace("_", "-"): {metric: v} for k, v in values.items()})


def t5(**values: tuple[float, float, float]) -> Rows:
    """Table 5 rows from (error %, AUC in, AUC out); ``kernel_independent`` -> ``kernel-independent``."""
    return rows({k.replace("_", "-"): dict(zip(("error_percent", "auc_in", "auc_out"), v)) for k, v in values.items()})


T5_TRUE = dict(analytic=(1.0, 0.97, 0.41), avb=(3.0, 0.80, 0.95), kernel_independent=(1.0, 0.97, 0.41),
               kernel_full=(3.5, 0.85, 0.58))

# (table, claim index): rows where its sentence is true / false / true or false only inside the noise
CASES: dict[tuple[str, int], tuple[Rows, Rows, Rows]] = {
    ("table1", 0): (one("error_percent", single=3.0, sliced=5.0, layerwise=1.0),
                    one("error_percent", single=1.0, sliced=5.0, layerwise=3.0),
                    one("error_percent", single=1.2, sliced=5.0, layerwise=1.0)),
    ("table1", 1): (one("train_seconds", single=100, sliced=300, layerwise=500),
                    one("train_seconds", single=300, sliced=100, layerwise=500),
                    one("train_seconds", single=110, sliced=100, layerwise=500)),
    ("table2", 0): (one("auc_out", shared_d1=0.60, independent_d1=0.50, shared_d8=0.50, independent_d8=0.40),
                    one("auc_out", shared_d1=0.60, independent_d1=0.65, shared_d8=0.50, independent_d8=0.40),
                    one("auc_out", shared_d1=0.60, independent_d1=0.59, shared_d8=0.50, independent_d8=0.40)),
    ("table3", 0): (one("auc_out", map=0.71, ensemble=0.65, bbb=0.40, mc_dropout=0.58, mnf=0.58, bbh=0.48),
                    one("auc_out", map=0.71, ensemble=0.65, bbb=0.40, mc_dropout=0.44, mnf=0.58, bbh=0.48),
                    one("auc_out", map=0.71, ensemble=0.65, bbb=0.47, mc_dropout=0.58, mnf=0.58, bbh=0.48)),
    ("table3", 1): (one("error_percent", map=3.0, ensemble=1.0, bbb=3.0, mc_dropout=1.0, mnf=3.0, bbh=2.0),
                    one("error_percent", map=3.0, ensemble=1.0, bbb=3.0, mc_dropout=3.0, mnf=3.0, bbh=2.0),
                    one("error_percent", map=2.2, ensemble=1.8, bbb=2.45, mc_dropout=2.25, mnf=1.9, bbh=2.65)),
    ("table4", 0): (one("error_percent", map=13.6, ensemble=10.2, bbb=13.8, mc_dropout=24.7, mnf=12.8, bbh=13.6),
                    one("error_percent", map=7.0, ensemble=10.2, bbb=13.8, mc_dropout=24.7, mnf=12.8, bbh=13.6),
                    one("error_percent", map=13.6, ensemble=10.2, bbb=13.8, mc_dropout=24.7, mnf=10.5, bbh=13.6)),
    ("table4", 1): (one("error_percent", map=13.6, ensemble=10.2, bbb=13.8, mc_dropout=24.7, mnf=12.8, bbh=13.6),
                    one("error_percent", map=13.6, ensemble=10.2, bbb=13.8, mc_dropout=24.7, mnf=12.8, bbh=30.0),
                    one("error_percent", map=13.6, ensemble=10.2, bbb=13.8, mc_dropout=24.7, mnf=12.8, bbh=24.5)),
    ("table5", 0): (t5(**T5_TRUE),
                    t5(**{**T5_TRUE, "kernel_independent": (1.0, 0.97, 0.70)}),   # farther than the full kernel
                    t5(**{**T5_TRUE, "kernel_independent": (1.0, 0.97, 0.56)})),  # 0.15 vs 0.17 away
    ("table5", 1): (one("error_percent", analytic=1.0, avb=5.0, kernel_independent=1.5, kernel_full=1.2),
                    one("error_percent", analytic=1.0, avb=5.0, kernel_independent=1.5, kernel_full=8.0),
                    one("error_percent", analytic=1.0, avb=1.6, kernel_independent=1.0, kernel_full=1.5)),
}


def test_every_claim_has_its_cases() -> None:
    assert set(CASES) == {(t, i) for t, spec in TABLES.items() for i in range(len(spec.claims))}


@pytest.mark.parametrize("key", list(CASES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_each_claim_is_supported_contradicted_or_inside_the_noise(key: tuple[str, int]) -> None:
    claim = TABLES[key[0]].claims[key[1]]
    true, false, noise = CASES[key]
    assert claim.check(true).outcome == "supported"
    assert claim.check(false).outcome == "contradicted"
    assert claim.check(noise).outcome == "not distinguishable"
    assert claim.check({}).outcome == "not measurable"


def test_map_alone_beating_bbh_contradicts_beaten_only_by_the_ensemble_and_dropout() -> None:
    """Issue 24's defect (a): the old check ("BbH ranks in the top 3") called this supported."""
    claim = TABLES["table3"].claims[1]
    verdict = claim.check(one("error_percent", map=1.0, ensemble=3.0, bbb=3.5, mc_dropout=3.0, mnf=3.5, bbh=2.0))
    assert verdict.outcome == "contradicted"
    assert {c.what for c in verdict.deciding} == {"ensemble < bbh in error %", "mc-dropout < bbh in error %",
                                                  "bbh < map in error %"}


def test_bbb_must_beat_bbh_on_outlier_uncertainty() -> None:
    """"Every method but BbB": BbB above BbH is as much part of the sentence as BbH above the others."""
    verdict = TABLES["table3"].claims[0].check(
        one("auc_out", map=0.71, ensemble=0.65, bbb=0.60, mc_dropout=0.58, mnf=0.58, bbh=0.48))
    assert verdict.outcome == "contradicted" and [c.what for c in verdict.deciding] == ["bbb < bbh in AUC out"]


@pytest.mark.parametrize("order", [("ensemble", "map"), ("map", "ensemble")])
def test_a_tie_is_a_tie_whatever_the_row_order(order: tuple[str, str]) -> None:
    """Issue 24's defect (b): 'ensembles achieve the best accuracy' on a tie came out contradicted by row order."""
    base = {"bbb": 13.8, "mc-dropout": 24.7, "mnf": 12.8, "bbh": 13.6}
    tied = one("error_percent", **{order[0]: 10.2, order[1]: 10.2}, **{k.replace("-", "_"): v for k, v in base.items()})
    verdict = TABLES["table4"].claims[0].check(tied)
    assert verdict.outcome == "not distinguishable"
    assert verdict.text() == ("not distinguishable at this budget (ensemble < map in error %: margin 0.00, a tie, "
                              "2 SE = 1.91)")
    # without any noise (both rows perfect) a tie still decides nothing
    perfect = one("error_percent", ensemble=0.0, map=0.0, bbb=5.0, mc_dropout=5.0, mnf=5.0, bbh=5.0)
    assert TABLES["table4"].claims[0].check(perfect).outcome == "not distinguishable"
    assert Comparison("a < b", 0.0, 0.0).holds is None


def test_one_image_at_the_smoke_budget_is_inside_the_noise() -> None:
    """Issue 24's defect (c): at 64 test images one image is 1.6 points of error, not a verdict."""
    smoke = {k: {"error_percent": v, "n_test": 64} for k, v in
             {"single": 1.5625, "sliced": 3.125, "layerwise": 0.0}.items()}
    assert TABLES["table1"].claims[0].check(smoke).outcome == "not distinguishable"
    assert "64 test images, so one image is 1.6 points of error" in noise_statement(smoke)


def test_standard_errors() -> None:
    assert standard_error({"error_percent": 2.0, "n_test": 2000}, "error_percent") == pytest.approx(
        100 * math.sqrt(0.02 * 0.98 / 2000))
    assert standard_error({"error_percent": 0.0, "n_test": 64}, "error_percent") == 0.0
    assert standard_error({"error_percent": 2.0}, "error_percent") is None  # n_test unknown: no noise estimate
    # the entropy AUC: the stored per-example SE, else the Bhatia-Davis bound sqrt(a (1 - a) / n)
    assert standard_error({"auc_out": 0.6, "auc_out_se": 0.004, "n_outliers": 2000}, "auc_out") == 0.004
    assert standard_error({"auc_out": 0.6, "n_outliers": 2000}, "auc_out") == pytest.approx(math.sqrt(0.24 / 2000))
    assert standard_error({"auc_in": 0.9, "auc_in_se": None, "n_test": 100}, "auc_in") == pytest.approx(0.03)
    # Hanley & McNeil (1982), their worked example: A = 0.893, 51 abnormal, 58 normal -> SE 0.032
    hm = standard_error({"ood_auroc": 0.893, "n_outliers": 51, "n_test": 58}, "ood_auroc")
    assert hm == pytest.approx(0.0325, abs=5e-4)
    assert standard_error({"train_seconds": 200.0}, "train_seconds") == pytest.approx(200 * TIMING_RELATIVE_SE)
    assert standard_error({"nll": 0.1, "n_test": 2000}, "nll") is None


def test_comparisons_combine_the_rows_noise() -> None:
    r = one("error_percent", a=1.0, b=2.0)
    c = below("error_percent", "a", "b")(r)
    se_a, se_b = (standard_error(r[k], "error_percent") for k in "ab")
    assert c.margin == 1.0 and c.se == pytest.approx(math.hypot(se_a, se_b))  # type: ignore[arg-type]
    d = closer("error_percent", "a", "a", "b")(r)  # a is at distance 0 from itself, b at 1
    assert d.margin == 1.0 and d.se == pytest.approx(math.sqrt(se_a ** 2 + se_b ** 2 + 4 * se_a ** 2))  # type: ignore[operator]
    # one failing comparison contradicts a conjunction even when another is inside the noise
    mixed = judge([Comparison("x", -1.0, 0.1), Comparison("y", 0.01, 0.1)])
    assert mixed.outcome == "contradicted" and [c.what for c in mixed.deciding] == ["x"]
    assert all_of(below("error_percent", "a", "zzz"))(r).text() == "not measurable (missing: zzz error %)"


def test_the_papers_own_numbers_never_contradict_its_sentences() -> None:
    """On the published rows (10,000 MNIST / 5,000 CIFAR-5 test images and as many outliers) every claim reads
    supported or, where the paper's own margins are a few test images, not distinguishable."""
    outcomes = {}
    for name, table in TABLES.items():
        n = 10_000 if table.task == "mnist" else 5_000
        published = rows({r.key: dict(zip(("error_percent", "auc_in", "auc_out", "train_seconds"), r.paper))
                          for r in table.rows if r.paper}, n)
        for i, claim in enumerate(table.claims):
            outcomes[(name, i)] = claim.check(published).outcome
    assert "contradicted" not in outcomes.values() and "not measurable" not in outcomes.values()
    assert outcomes[("table3", 1)] == "not distinguishable"  # BbH 0.56 % vs ensemble 0.49 %: 7 of 10,000 images


def test_the_table_writes_each_verdict_with_its_noise() -> None:
    table = TABLES["table4"]
    results = {k: {"test": {"error_percent": e, "entropy_auc": 0.8, "entropy_auc_se": 0.005, "nll": 0.5, "ece": 0.05,
                            "n": 1000},
                   "outliers": {"entropy_auc": 0.6, "n": 1000}, "train_seconds": 10.0}
               for k, e in {"map": 13.6, "ensemble": 10.2, "bbb": 13.8, "mc-dropout": 24.7, "mnf": 12.8,
                            "bbh": 25.0, "laplace": 13.0}.items()}
    metrics = {k: row_metrics(r) for k, r in results.items()}
    assert metrics["map"]["n_test"] == 1000 and metrics["map"]["auc_in_se"] == 0.005
    assert metrics["map"]["auc_out_se"] is None  # not in results written before it was stored
    text = render_table(table, metrics, BUDGETS["cpu"], 1.0)
    # the ensemble is 26 of 1,000 images ahead of MNF: inside 2 SE at this size
    assert ("* deep ensembles achieve the best accuracy: not distinguishable at this budget (ensemble < mnf in "
            "error %: margin 2.60, 2 SE = 2.85).") in text
    assert ("* MC-Dropout has the highest error: not distinguishable at this budget (bbh < mc-dropout in error %: "
            "margin -0.30, 2 SE = 3.87).") in text
    assert "1,000 test images, so one image is 0.1 points of error; 1,000 outliers" in text
