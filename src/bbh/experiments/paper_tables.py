"""The paper's tables and figures as data: which runs each needs, the published numbers, and its claims.

Every table of Pawlowski et al. (2017) is a list of :class:`Row` (a shipped experiment, ``bbh/experiments/configs``,
plus the overrides that make the row) with the paper's Error %, in-distribution entropy AUC, outlier
entropy AUC and runtime beside it; each table states the claims the paper draws from it as
:class:`Claim` checks over the measured rows: ``bbh reproduce`` writes whether each is supported, contradicted or not
distinguishable within the noise of the budget's test set (:mod:`bbh.experiments.claims`). The runs of the
figures are rows of the tables (Figs. 3/4: Tables 3/4's FGSM curves; Figs. 5-9: Tables 3/4's MNF and BbH
weight posteriors), so a figure never trains anything a table does not.

Row mapping (docs/protocol.md §7): Table 1 single / sliced / layer-wise hypernets with shared noise d = 1;
Table 2 shared / independent noise x d in {1, 8}; Tables 3 / 4 the six methods on MNIST / CIFAR-5 (BbH
with independent noise, d = 1) plus the post-hoc last-layer Laplace approximation of the MAP run, the
baseline users would pick instead (not in the paper: its paper columns are empty); Table 5 Bayes by
Backprop with the analytic, adversarial (AVB), per-weight kernel and full kernel KL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..reports.runs import PAPER_TABLES
from .claims import Verdict, all_of, below, closer

Metrics = Mapping[str, Any]
"""One row's measured numbers: ``error_percent``, ``auc_in``, ``auc_out``, ``ood_auroc``, ``nll``, ``ece``,
``train_seconds``, and what their noise needs: ``n_test``, ``n_outliers``, ``auc_in_se``, ``auc_out_se`` (see
:func:`bbh.experiments.reproduce.row_metrics`)."""

LAPLACE = "laplace"
"""The key of the post-hoc last-layer Laplace row (fitted on the table's MAP run, not trained)."""


@dataclass(frozen=True)
class Row:
    """One row of a paper table.

    Attributes:
        key: a short unique name (the run folder is ``runs/<task>-<key>``).
        label: the paper's row name.
        config: the shipped experiment it starts from (``mnist-bbh``, ...); empty for the Laplace row.
        overrides: ``{"table.key": value}`` on top of the experiment (what makes this row this row).
        paper: the paper's (Error %, in-distribution AUC, outlier AUC, runtime s); ``None`` where the paper has
            no such row.
    """

    key: str
    label: str
    config: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    paper: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Claim:
    """A sentence of the paper about a table and the check of exactly that sentence on the measured rows.

    ``check(rows)`` gets ``{row key: metrics}`` and returns a :class:`bbh.experiments.claims.Verdict`: supported,
    contradicted, not distinguishable at this budget (a margin inside 2 SE of its noise) or not measurable.
    """

    text: str
    check: Callable[[Mapping[str, Metrics]], Verdict]


@dataclass(frozen=True)
class TableSpec:
    """A paper table: its rows, task and claims."""

    name: str
    title: str
    task: str
    rows: tuple[Row, ...]
    claims: tuple[Claim, ...] = ()


def _lowest(metric: str, winner: str, among: tuple[str, ...]) -> Callable[[Mapping[str, Metrics]], Verdict]:
    """``winner``'s ``metric`` is below every other row of ``among``."""
    return all_of(*(below(metric, winner, k) for k in among if k != winner))


def _highest(metric: str, loser: str, among: tuple[str, ...]) -> Callable[[Mapping[str, Metrics]], Verdict]:
    """``loser``'s ``metric`` is above every other row of ``among``."""
    return all_of(*(below(metric, k, loser) for k in among if k != loser))


def _beaten_only_by(metric: str, row: str, by: tuple[str, ...], among: tuple[str, ...]
                    ) -> Callable[[Mapping[str, Metrics]], Verdict]:
    """"``row`` is beaten (lower ``metric``) only by ``by``": every row of ``by`` is below ``row``, and ``row`` is
    below every other row of ``among``."""
    return all_of(*(below(metric, k, row) for k in by),
                  *(below(metric, row, k) for k in among if k != row and k not in by))


_TABLE2_NOISE = all_of(below("auc_out", "independent-d1", "shared-d1"),
                       below("auc_out", "independent-d8", "shared-d8"),
                       below("auc_out", "shared-d8", "shared-d1"),
                       below("auc_out", "independent-d8", "independent-d1"))
"""Table 2: one step more noise (shared -> independent at each d, d = 1 -> 8 for each noise) lowers the outlier
AUC, in each of the four steps."""

_TABLE5_CLOSEST = all_of(*(closer(m, "analytic", "kernel-independent", far)
                           for m in ("error_percent", "auc_in", "auc_out") for far in ("avb", "kernel-full")))
"""Table 5: on each of the paper's result columns (error, AUC in, AUC out) the per-weight kernel row is closer to
the analytic row than AVB and than the full kernel."""


def _shared(layout: str) -> dict[str, Any]:
    """Table 1's rows: the hypernet ``layout`` with shared noise, d = 1 (the overrides of Table 2's first row)."""
    return {"method.layout": layout, "method.noise": "shared", "method.noise_dim": 1}


_BBH_T3 = {"method.layout": "layerwise", "method.noise": "independent", "method.noise_dim": 1}
_METHODS = ("map", "ensemble", "bbb", "mc-dropout", "mnf", "bbh")
_LABELS = {"map": "MAP", "ensemble": "Ensemble", "bbb": "BbB", "mc-dropout": "Dropout", "mnf": "MNF", "bbh": "BbH"}
_T3_PAPER, _T4_PAPER = PAPER_TABLES["mnist"], PAPER_TABLES["cifar5"]  # the one copy, also read by bbh compare


_BBH_PAPER = {**_BBH_T3, "method.kl": "nn-per-weight", "method.init_spread": None}
"""The paper's BbH beside bbh's default: Eq. 2 per weight, no Gaussian layer, the init's own spread."""


def _method_rows(task: str, paper: Mapping[str, tuple[float, float, float, float]]) -> tuple[Row, ...]:
    rows = [Row(m, _LABELS[m], f"{task}-{m}", _BBH_T3 if m == "bbh" else {}, paper[m]) for m in _METHODS]
    if task == "mnist":
        rows.append(Row("bbh-paper", "BbH, the paper's estimator (Eq. 2 per weight)", "mnist-bbh", _BBH_PAPER,
                        paper["bbh"]))
    return (*rows, Row(LAPLACE, "Last-layer Laplace (not in the paper)", ""))


TABLES: dict[str, TableSpec] = {
    "table1": TableSpec(
        "table1", "Table 1: hypernetwork architectures (MNIST, LeNet-5, shared noise, d = 1)", "mnist",
        (Row("single", "Single G", "mnist-bbh", _shared("single"),
             (1.1, 0.89, 0.48, 2961)),
         Row("sliced", "Sliced layer-wise G_l", "mnist-bbh", _shared("sliced"),
             (1.7, 0.93, 0.55, 7119)),
         Row("layerwise", "Layer-wise G_l", "mnist-bbh", _shared("layerwise"),
             (0.73, 0.98, 0.54, 11361))),
        (Claim("the layer-wise architecture has the lowest error",
               _lowest("error_percent", "layerwise", ("single", "sliced", "layerwise"))),
         Claim("a single hypernetwork trains fastest", _lowest("train_seconds", "single",
                                                               ("single", "sliced", "layerwise"))))),
    "table2": TableSpec(
        "table2", "Table 2: auxiliary noise (MNIST, LeNet-5, layer-wise)", "mnist",
        tuple(Row(f"{noise}-d{d}", f"{noise.capitalize()} noise, d = {d}", "mnist-bbh",
                  {"method.layout": "layerwise", "method.noise": noise, "method.noise_dim": d}, paper)
              for noise, d, paper in (("shared", 1, (0.73, 0.98, 0.54, 11361)),
                                      ("independent", 1, (0.56, 0.97, 0.48, 11504)),
                                      ("shared", 8, (0.56, 0.98, 0.49, 11314)),
                                      ("independent", 8, (0.64, 0.97, 0.44, 11268)))),
        (Claim("more noise (independent instead of shared noise at d = 1 and at d = 8, d = 8 instead of 1 with "
               "either noise) increases the predictive uncertainty on outliers (lower outlier AUC)", _TABLE2_NOISE),)),
    "table3": TableSpec(
        "table3", "Table 3: MNIST (LeNet-5), notMNIST outliers", "mnist", _method_rows("mnist", _T3_PAPER),
        (Claim("BbH has a higher predictive uncertainty on outliers (lower outlier AUC) than every method but BbB, "
               "whose is higher still", _beaten_only_by("auc_out", "bbh", ("bbb",), _METHODS)),
         Claim("BbH's error is beaten only by the ensemble and MC-Dropout",
               _beaten_only_by("error_percent", "bbh", ("ensemble", "mc-dropout"), _METHODS)))),
    "table4": TableSpec(
        "table4", "Table 4: CIFAR-5 (ResNet-32), CIFAR-10 classes 5-9 as outliers", "cifar5",
        _method_rows("cifar5", _T4_PAPER),
        (Claim("deep ensembles achieve the best accuracy", _lowest("error_percent", "ensemble", _METHODS)),
         Claim("MC-Dropout has the highest error", _highest("error_percent", "mc-dropout", _METHODS)))),
    "table5": TableSpec(
        "table5", "Table 5: KL estimators for Bayes by Backprop (MNIST, LeNet-5)", "mnist",
        (Row("analytic", "Analytical", "mnist-bbb", {}, _T3_PAPER["bbb"]),  # BbB's default KL: Table 3's BbB row
         Row("avb", "Adversarial Variational Bayes", "mnist-bbb", {"method.kl": "adversarial"},
             (0.97, 1.00, 0.95, 22187)),
         Row("kernel-independent", "Kernel with independent prior", "mnist-bbb", {"method.kl": "nn-per-weight"},
             (0.76, 0.98, 0.46, 5707)),
         Row("kernel-full", "Kernel with full prior", "mnist-bbb", {"method.kl": "nn-full"},
             (0.88, 0.99, 0.58, 4644))),
        (Claim("BbB trained with the per-weight kernel KL estimate comes closest to BbB with the analytic KL: "
               "closer than AVB and than the full kernel in each of error, AUC in and outlier AUC", _TABLE5_CLOSEST),
         Claim("AVB gives the worst error", _highest("error_percent", "avb", ("analytic", "avb", "kernel-independent",
                                                                             "kernel-full"))))),
}
"""Paper Tables 1-5 (numbers from the paper's text; runtimes in seconds on the authors' GPU)."""

FIGURES: dict[str, tuple[str, str]] = {
    "fig3": ("table3", "Figure 3: FGSM on MNIST: accuracy (solid) and entropy / log K (dashed) against epsilon"),
    "fig4": ("table4", "Figure 4: FGSM on CIFAR-5"),
    "fig5-9": ("table3+table4", "Figures 5-9: weight posteriors of MNF and BbH (LeNet-5 on MNIST, ResNet-32 on "
                                "CIFAR-5): marginals of the first 25 weights and correlations in the first conv"),
    "fig1": ("toy", "Figure 1: toy regression (MAP, MC-Dropout, BbB, MNF, BbH, ensemble and the HMC reference)"),
}
"""The paper's figures: which table's runs each draws on."""

NAMES = ("fig1", "table1", "table2", "table3", "table4", "table5", "fig3", "fig4", "fig5-9")
"""What ``bbh reproduce`` accepts besides ``all`` (in the order ``all`` makes them)."""
