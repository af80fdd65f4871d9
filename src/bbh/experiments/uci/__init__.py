"""The UCI regression benchmark: ``bbh uci`` and :func:`run_uci`.

Every (dataset, method, split) cell is trained and scored under the protocol of the published tables
(Hernández-Lobato & Adams 2015; Gal & Ghahramani 2016; Lakshminarayanan et al. 2017):

* inputs and targets standardised with the training split's statistics (:meth:`bbh.data.uci.UCIDataset.split`);
* one hidden layer of ``n_hidden.txt`` ReLU units (50; 100 for protein);
* a Gaussian likelihood whose noise level is learned (:class:`bbh.likelihoods.LearnedGaussian`; the deep
  ensemble, as published, predicts a variance per member: :class:`bbh.likelihoods.Heteroscedastic`);
* the scores in the original units of y, on the test part:

      test LL = (1/N) Σ_n log (1/S) Σ_s N(y_n; μ_s(x_n), σ_s²)          (logsumexp over the S draws)
      RMSE    = sqrt((1/N) Σ_n (y_n - (1/S) Σ_s μ_s(x_n))²)

  reported as mean ± standard error (sample std with ddof 1 / sqrt(#splits)) over the splits.

Hyper-parameters are fixed defaults (:func:`uci_settings`), the same for every dataset, except what a setting leaves
open — its training length (``select_steps``), its dropout rate (``select_dropout``) and the scale c of its
predictive noise (``calibrate_noise``): those are chosen **per split, on that split's own validation carve-out** (the
last 20 % of a seeded permutation of the split's training rows; :func:`select_on_validation`), as the 2018 re-run
of MC-Dropout chose its settings. No split's test rows can touch any choice, its own or another split's
(:func:`selection_rows`; a test checks the disjointness). The budget (:data:`BUDGETS`)
sets the splits, the training length and the posterior samples. Every finished cell is written atomically to
``OUT/cells/<kind>/<dataset>/<method>/split_<k>.json`` and never redone, so an interrupted run continues where
it stopped; ``OUT/results.json`` and ``OUT/report.md`` (``results-gap.json`` / ``report-gap.md`` for the gap
splits) are rewritten after every cell. The references (``--methods ...,hmc,nuts``: bbh's HMC,
:mod:`bbh.reference.hmc_regression`, and NumPyro's NUTS, :mod:`bbh.reference.nuts`) run on datasets of at most
:data:`HMC_MAX_ROWS` rows, on the first ``hmc_splits`` splits.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...core.io import atomic_write, ensure_writable, read_json_object, write_json
from ...core.threads import announce, use_threads
from ...data.uci import SPLIT_KINDS, UCIDataset, load_uci, uci_datasets
from ...reports.uci import render_report
from ...training import progress as lines
from .cells import cell_path, run_cell, scale_noise, score
from .published import PUBLISHED_LL, PUBLISHED_RMSE, PUBLISHED_SOURCES
from .results import aggregate, mean_se, merge_results
from .selection import select_on_validation, selection_grid, selection_path, selection_rows
from .settings import (
    BUDGETS,
    GRID_METHODS,
    HMC_MAX_ROWS,
    NOISE_SCALES,
    REFERENCE_METHODS,
    TUNED_LENGTHS,
    UCI_METHODS,
    UNTUNED,
    UNTUNED_METHODS,
    VALIDATION,
    Budget,
    UCISetting,
    build_method,
    prior_std,
    protocol_hidden,
    training_steps,
    uci_settings,
)


def _splits_for(dataset: UCIDataset, method: str, kind: str, budget: Budget, splits: int | None) -> list[int]:
    available = list(range(dataset.n_splits)) if kind == "standard" else dataset.gap_dimensions
    wanted = splits if splits is not None else budget.splits
    if kind == "standard" and splits is not None and splits > len(available) and method not in REFERENCE_METHODS:
        warnings.warn(f"{dataset.name} has {len(available)} standard splits; --splits {splits} runs all "
                      f"{len(available)}", stacklevel=3)
    if method in REFERENCE_METHODS:
        if len(dataset.x) > HMC_MAX_ROWS:
            return []
        wanted = min(wanted or len(available), budget.hmc_splits)
    return available[:wanted] if wanted is not None else available

def run_uci(data_dir: str | Path, out: str | Path, *, datasets: Sequence[str] | None = None,
            methods: Sequence[str] = GRID_METHODS, splits: int | None = None, budget: str | Budget = "full",
            split_kind: str = "standard", seed: int = 0, progress: bool = True, train: bool = True,
            on_cell: Callable[[dict[str, Any]], None] | None = None,
            merge: str | Path | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run the benchmark grid (datasets x methods x splits) and write ``results.json`` and ``report.md``.

    Args:
        data_dir: a folder of dataset folders in the standard layout (``DIR/<name>/data.txt`` ...), or a data
            directory holding them under ``uci/``.
        out: the output folder; finished cells found there are not redone (resume).
        datasets: folder names (default: every dataset folder found).
        methods: some of :data:`GRID_METHODS` (:data:`UCI_METHODS` tuned, :data:`UNTUNED_METHODS`) and the
            references ``"hmc"``, ``"nuts"``.
        splits: the first ``splits`` splits (default: the budget's).
        budget: a name in :data:`BUDGETS`, or a :class:`Budget` (recorded as ``"custom"``).
        split_kind: ``"standard"`` (the published splits) or ``"gap"`` (one per qualifying input dimension).
        seed: the base seed; split k trains with ``seed + k``.
        train: False: train nothing, only write ``results.json`` / ``report.md`` from the finished cells (e.g.
            after several processes each ran part of the grid into the same ``out``); missing cells are counted.
        on_cell: called with every newly finished cell's record.
        merge: an earlier run's ``results.json``: the methods not in ``methods`` are tabulated from it
            (:func:`merge_results`; same budget and split kind), e.g. after rerunning one method into a new ``out``.
        threads: torch threads while training (default one per process, :func:`bbh.threads.use_threads` with
            ``"small"``: these networks gain nothing from more, and several processes can share the cores; a
            count set with ``OMP_NUM_THREADS`` or ``torch.set_num_threads`` is kept); restored after.

    Without a progress bar, inside :func:`bbh.training.progress.log_lines` (``bbh uci`` without a terminal), one
    line per finished cell with an ETA instead of the cells' own training lines.

    A cell whose training diverges (or whose scores are not finite) is recorded with its error under
    ``"failed"``, left out of the means and counted in the report; the run goes on. Cells record the budget and
    seed they were made with; resuming with others is refused.

    Raises:
        ValueError: an unknown method, budget, split kind or dataset, or ``out`` made with another budget.
        ImportError: ``"nuts"`` without NumPyro and JAX (the extra ``reference``).
        FileNotFoundError: ``data_dir`` holds no dataset folder.
    """
    from tqdm.auto import tqdm

    if isinstance(budget, Budget):
        plan, budget = budget, "custom"
    elif budget in BUDGETS:
        plan = BUDGETS[budget]
    else:
        raise ValueError(f"unknown budget {budget!r}; expected one of {', '.join(BUDGETS)} or a Budget")
    if split_kind not in SPLIT_KINDS:
        raise ValueError(f"unknown split kind {split_kind!r}; expected one of {', '.join(SPLIT_KINDS)}")
    valid = (*GRID_METHODS, *REFERENCE_METHODS)
    unknown = [m for m in methods if m not in valid]
    if unknown or not methods:
        raise ValueError(f"unknown UCI method(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"expected some of {', '.join(valid)}")
    if splits is not None and splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    if "nuts" in methods and train:
        from ...reference.nuts import check_available

        check_available()  # an ImportError naming the extra before any cell runs
    methods = list(dict.fromkeys(methods))  # a name given twice would count its splits twice
    root = uci_root(data_dir)
    found = uci_datasets(root)
    names = list(dict.fromkeys(datasets)) if datasets else found
    missing = [n for n in names if n not in found and not (root / n).is_dir()]
    if missing or not names:
        raise FileNotFoundError(f"{root}: no UCI dataset folder {', '.join(map(repr, missing)) or '(none found)'}; "
                                f"found: {', '.join(found) or 'none'}")
    loaded = {n: load_uci(root / n) for n in names}  # an incomplete folder: load_uci names the missing file
    out_dir = ensure_writable(out)
    _check_same_budget(out_dir, budget, asdict(plan), seed)
    made_by = {"budget_name": budget, "budget": asdict(plan), "seed": seed}
    grid = [(n, m, k) for n in names for m in methods for k in _splits_for(loaded[n], m, split_kind, plan, splits)]
    settings: dict[str, Any] = {m: uci_settings()[m].describe() for m in methods if m in GRID_METHODS}
    cells: list[dict[str, Any]] = []
    todo = []
    for n, m, k in grid:
        path = cell_path(out_dir, split_kind, n, m, k)
        record = read_json_object(path)  # None: not done (or unreadable: redone)
        if record is None or not ({"test_ll", "rmse", "split"} <= record.keys() or "failed" in record):
            todo.append((n, m, k))
            continue
        if m in GRID_METHODS and record.get("setting") != settings[m]:
            raise ValueError(f"{path} was made with other {m} settings ({record.get('setting')}) than this version's "
                             f"({settings[m]}); choose another --out")
        other = {key: (record[key], value) for key, value in made_by.items() if key in record and record[key] != value}
        if other:
            raise ValueError(f"{path} was made with other {', '.join(other)} ({other}); choose another --out")
        cells.append(record)
    earlier: dict[str, Any] | None = None
    if merge is not None:
        try:
            earlier = json.loads(Path(merge).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--merge {merge}: cannot read a results.json ({err})") from err

    def tabulate(missing: int) -> dict[str, Any]:
        own = _results(cells, budget, plan, split_kind, settings, missing=missing)
        return own if earlier is None else merge_results(own, earlier, methods, source=str(merge))

    results = tabulate(len(todo))
    if not train:
        todo = []
    selecting = {m for m in methods if m in GRID_METHODS and uci_settings()[m].selects}
    chosen: dict[tuple[str, str, int], dict[str, Any]] = {}  # (dataset, method, split) -> its own selection
    started, done_before = time.perf_counter(), len(grid) - len(todo)
    with use_threads("small", threads), tqdm(total=len(grid), initial=done_before, desc="bbh uci",
                                             disable=not progress, unit="cell") as bar:
        if todo:
            announce()
            if not progress:
                lines.emit(f"bbh uci: {len(todo)} cell{'' if len(todo) == 1 else 's'} to run, {done_before} done")
        for i, (n, m, k) in enumerate(todo, 1):
            bar.set_postfix_str(f"{n} {m} split {k}")
            if m in selecting and (n, m, k) not in chosen:
                bar.set_postfix_str(f"{n} {m} split {k}: choosing on its validation carve-out")
                with lines.quiet():
                    chosen[n, m, k] = _selection(out_dir, loaded[n], m, k, split_kind, plan, seed, settings[m])
            selection = chosen.get((n, m, k), {})
            try:
                with lines.quiet():  # one line per cell below, not the cell's training lines
                    record = run_cell(loaded[n], m, k, kind=split_kind, budget=plan, seed=seed,
                                      steps=selection.get("steps"), noise_scale=selection.get("noise_scale"),
                                      dropout=selection.get("dropout"))
            except FloatingPointError as err:  # a diverged cell is recorded (and not retried: its seed is fixed)
                record = {"dataset": n, "method": m, "split": k, "kind": split_kind, "failed": str(err),
                          "seconds": 0.0, "setting": settings.get(m)}
                print(f"bbh uci: {n} {m} split {k} diverged, recorded as failed: {err}", file=sys.stderr)
            if selection.get("grid") and "failed" not in record:  # a length at the grid's end: the grid may be short
                record["length_at_edge"] = selection["steps"] in (min(selection["grid"]), max(selection["grid"]))
            record.update(made_by)
            write_json(cell_path(out_dir, split_kind, n, m, k), record)
            cells.append(record)
            results = tabulate(len(grid) - len(cells))
            _write_results(out_dir, results)
            if on_cell is not None:
                on_cell(record)
            bar.update(1)
            if not progress:
                elapsed = time.perf_counter() - started
                eta = f"ETA {lines.duration(elapsed / i * (len(todo) - i))}" if i < len(todo) else "done"
                lines.emit(f"bbh uci: cell {done_before + i}/{len(grid)} {n} {m} split {k} "
                           f"({record['seconds']:.1f} s); {lines.duration(elapsed)} elapsed, {eta}")
    _write_results(out_dir, results)
    return results

def _selection(out: Path, dataset: UCIDataset, method: str, k: int, kind: str, plan: Budget, seed: int,
               setting: dict[str, Any]) -> dict[str, Any]:
    """The stored choice for split ``k`` of (dataset, method) (:func:`select_on_validation` on that split's own
    carve-out), made once and reused by a resumed run."""
    path = selection_path(out, kind, dataset.name, method, k)
    stored = read_json_object(path)
    if (stored is not None and stored.get("setting") == setting and stored.get("budget") == asdict(plan)
            and stored.get("seed") == seed):
        return stored
    chosen = select_on_validation(dataset, method, split=k, kind=kind, budget=plan, seed=seed)
    chosen.update(dataset=dataset.name, method=method, kind=kind, setting=setting, budget=asdict(plan), seed=seed)
    write_json(path, chosen)
    return chosen


def uci_root(data_dir: str | Path) -> Path:
    """``data_dir/uci`` when it exists, else ``data_dir`` itself (a folder of dataset folders)."""
    root = Path(data_dir)
    return root / "uci" if (root / "uci").is_dir() else root


def _check_same_budget(out: Path, budget: str, plan: dict[str, Any], seed: int) -> None:
    """Resume only what the same budget and seed made: cells of another budget would mix into the tables."""
    meta = out / "uci-run.json"
    made = read_json_object(meta)
    if made is None and meta.exists():
        raise ValueError(f"{meta} is unreadable; it records which budget and seed made the cells in {out}: restore "
                         f"it or choose another --out")
    if made is not None:
        if (made.get("budget"), made.get("plan"), made.get("seed")) != (budget, plan, seed):
            raise ValueError(f"{out} holds a run with budget {made.get('budget')!r} and seed {made.get('seed')}; "
                             f"resume it with those, or choose another --out for budget {budget!r} seed {seed}")
    else:
        write_json(meta, {"budget": budget, "plan": plan, "seed": seed})


def _results(cells: list[dict[str, Any]], budget: str, plan: Budget, kind: str,
             settings: dict[str, Any], missing: int = 0) -> dict[str, Any]:
    return {"split_kind": kind, "budget_name": budget, "budget": asdict(plan), "settings": settings,
            "method_order": [*GRID_METHODS, *REFERENCE_METHODS], "validation": VALIDATION,
            "n_cells": len(cells), "missing_cells": missing, "seconds": sum(c["seconds"] for c in cells),
            "datasets": aggregate(cells),
            "published": {"test_ll": PUBLISHED_LL, "rmse": PUBLISHED_RMSE, "sources": PUBLISHED_SOURCES}}


def _write_results(out: Path, results: dict[str, Any]) -> None:
    suffix = "" if results["split_kind"] == "standard" else f"-{results['split_kind']}"
    write_json(out / f"results{suffix}.json", results)
    report = render_report(results)
    atomic_write(out / f"report{suffix}.md", lambda tmp: Path(tmp).write_text(report))


__all__ = ["BUDGETS", "GRID_METHODS", "HMC_MAX_ROWS", "NOISE_SCALES", "PUBLISHED_LL", "PUBLISHED_RMSE",
           "PUBLISHED_SOURCES", "REFERENCE_METHODS", "TUNED_LENGTHS", "UCI_METHODS", "UNTUNED", "UNTUNED_METHODS",
           "VALIDATION", "Budget", "UCISetting", "aggregate", "build_method", "cell_path", "mean_se",
           "merge_results", "prior_std", "protocol_hidden", "render_report", "run_cell", "run_uci", "scale_noise",
           "score", "select_on_validation", "selection_grid", "selection_path", "selection_rows", "training_steps",
           "uci_root", "uci_settings"]
