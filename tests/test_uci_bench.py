"""``bbh uci`` / :func:`bbh.experiments.uci.run_uci` on small synthetic folders in the standard layout."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_uci_data import write_uci_folder
from torch import Tensor

import bbh.experiments.uci as uci
from bbh.cli import main
from bbh.core.predictive import RegressionPredictive
from bbh.data import load_uci
from bbh.data.uci import UCIDataset
from bbh.experiments.uci import Budget, cell_path, mean_se, run_cell, run_uci, score, training_steps

TINY = Budget(splits=2, min_steps=20, max_steps=40, n_samples=4)


def _dataset(folder: Path, seed: int = 0, rows: int = 60, features: int = 3, splits: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    y = 3.0 * x[:, :1] - 2.0 * x[:, 1:2] ** 2 + 0.3 * rng.normal(size=(rows, 1)) + 10.0
    data = np.concatenate([x, y], axis=1)
    parts = []
    for _ in range(splits):
        perm = rng.permutation(rows).tolist()
        parts.append((perm[: rows * 4 // 5], perm[rows * 4 // 5:]))
    return write_uci_folder(folder, data, list(range(features)), features, parts, n_hidden=8, n_epochs=2)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    _dataset(tmp_path / "data" / "uci" / "alpha", seed=0)
    _dataset(tmp_path / "data" / "uci" / "beta", seed=1, features=2)
    return tmp_path / "data"


def test_score_is_the_mixture_log_likelihood_in_original_units(tmp_path: Path) -> None:
    """Two draws, one test point, y_std = 2, y_mean = 10: LL = log ((N(y; μ1, σ1²) + N(y; μ2, σ2²)) / 2) - log 2."""
    dataset = load_uci(_dataset(tmp_path / "d"))
    split = dataset.split(0)
    split.y_mean, split.y_std = torch.tensor(10.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    means = torch.tensor([[[0.5]], [[-1.0]]], dtype=torch.float64)            # [S=2, B=1, 1], standardised
    variances = torch.tensor([[[0.25]], [[1.0]]], dtype=torch.float64)
    y_std_units = torch.tensor([0.0], dtype=torch.float64)                      # y = 10 in original units
    record = score(RegressionPredictive(means, variances), split, y_std_units, torch.tensor([10.0]))

    def normal(y: float, mu: float, var: float) -> float:
        return math.exp(-(y - mu) ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)

    expected = math.log((normal(0.0, 0.5, 0.25) + normal(0.0, -1.0, 1.0)) / 2) - math.log(2.0)
    assert record["test_ll"] == pytest.approx(expected, abs=1e-12)
    # The predictive mean is -0.25 standardised, 9.5 in original units: RMSE 0.5.
    assert record["rmse"] == pytest.approx(0.5, abs=1e-12)
    assert record["noise_std"] == pytest.approx(2 * math.sqrt((0.25 + 1.0) / 2), abs=1e-12)
    assert record["epistemic_std"] == pytest.approx(2 * 0.75, abs=1e-12)


def test_mean_se() -> None:
    got = mean_se([1.0, 2.0, 6.0])
    assert got["mean"] == pytest.approx(3.0)
    assert got["se"] == pytest.approx(math.sqrt(((4 + 1 + 9) / 2) / 3))
    assert mean_se([5.0])["se"] == 0.0


def test_training_steps_clamps_whole_epochs_into_the_budget() -> None:
    assert training_steps(320, 32, 40, Budget(None, 100, None, 1)) == (40, 10)      # 400 steps >= 100
    assert training_steps(320, 32, 4, Budget(None, 100, None, 1)) == (10, 10)       # raised to 100 steps
    assert training_steps(320, 32, 40, Budget(None, 10, 55, 1)) == (5, 10)         # capped at 50 <= 55
    assert training_steps(10, 32, 40, Budget(None, 10, 5, 1)) == (5, 1)            # one batch per epoch


@pytest.mark.parametrize("method", ["map", "mc-dropout", "ensemble", "bbb", "mnf", "bbh"])
def test_every_method_runs_a_cell_with_finite_scores(data_dir: Path, method: str) -> None:
    dataset = load_uci(data_dir / "uci" / "alpha")
    record = run_cell(dataset, method, 1, budget=TINY)
    assert record["split"] == 1 and record["n_train"] == 48 and record["n_test"] == 12
    assert math.isfinite(record["test_ll"]) and record["rmse"] > 0
    # the ensemble keeps its published protocol (n_epochs.txt epochs, here 2, of one full batch); the others
    # train at least the budget's steps
    assert record["steps"] == 2 if method == "ensemble" else record["steps"] >= TINY.min_steps


def test_validation_scores_the_carve_out_and_not_the_test_part(data_dir: Path) -> None:
    dataset = load_uci(data_dir / "uci" / "alpha")
    record = run_cell(dataset, "map", 0, budget=TINY, validation=0.5)
    assert record["scored"] == "validation" and record["n_test"] == 24 and record["n_train"] == 24  # test part: 12


def test_run_writes_results_and_report_and_resumes_without_redoing_cells(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done: list[tuple[str, str, int]] = []

    def stop_after_three(record: dict) -> None:
        done.append((record["dataset"], record["method"], record["split"]))
        if len(done) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_uci(data_dir, out, methods=["map", "bbb"], budget=TINY, progress=False, on_cell=stop_after_three)
    first = sorted(p.relative_to(out).as_posix() for p in (out / "cells").rglob("*.json"))
    assert len(first) == 3
    kept = {p: (out / p).read_text() for p in first}

    again: list[tuple[str, str, int]] = []
    results = run_uci(data_dir, out, methods=["map", "bbb"], budget=TINY, progress=False,
                      on_cell=lambda r: again.append((r["dataset"], r["method"], r["split"])))
    assert len(again) == 2 * 2 * 2 - 3 and not set(again) & set(done)
    assert all((out / p).read_text() == text for p, text in kept.items())  # finished cells untouched
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    for name in ("alpha", "beta"):
        for method in ("map", "bbb"):
            entry = results["datasets"][name][method]
            assert entry["n_splits"] == 2 and len(entry["test_ll"]["per_split"]) == 2
            assert entry["test_ll"]["mean"] == pytest.approx(sum(entry["test_ll"]["per_split"]) / 2)
            assert set(entry["rmse"]) == {"mean", "se", "per_split"}
            cells = [json.loads(cell_path(out, "standard", name, method, k).read_text()) for k in (0, 1)]
            assert entry["std_over_rmse"]["per_split"] == pytest.approx(
                [math.sqrt(c["noise_std"] ** 2 + c["epistemic_std"] ** 2) / c["rmse"] for c in cells])
    report = (out / "report.md").read_text()
    assert "| alpha |" in report and "Test log-likelihood" in report and "PBP" in report


def test_resume_refuses_another_budget(data_dir: Path, tmp_path: Path) -> None:
    run_uci(data_dir, tmp_path / "out", datasets=["beta"], methods=["map"], splits=1, budget=TINY, progress=False)
    with pytest.raises(ValueError, match="another --out"):
        run_uci(data_dir, tmp_path / "out", datasets=["beta"], methods=["map"], budget="quick", progress=False)


def test_bad_arguments_are_refused_before_training(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown UCI method"):
        run_uci(data_dir, tmp_path / "o1", methods=["map", "nope"], budget=TINY, progress=False)
    (data_dir / "uci" / "alpha" / "n_splits.txt").unlink()
    with pytest.raises(FileNotFoundError, match="alpha.*n_splits.txt"):   # the missing file is named
        run_uci(data_dir, tmp_path / "o4", datasets=["alpha"], budget=TINY, progress=False)
    with pytest.raises(FileNotFoundError, match="gamma"):
        run_uci(data_dir, tmp_path / "o2", datasets=["gamma"], budget=TINY, progress=False)
    with pytest.raises(ValueError, match="unknown budget"):
        run_uci(data_dir, tmp_path / "o3", budget="huge", progress=False)
    assert not (tmp_path / "o4").exists()  # nothing written before the data is known good


def test_cli_gap_splits_and_errors(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gap"
    code = main(["uci", "--data-dir", str(data_dir), "--datasets", "beta", "--methods",
                 "map-untuned,mc-dropout-untuned", "--budget", "quick", "--split-kind", "gap", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    results = json.loads((out / "results-gap.json").read_text())
    assert results["split_kind"] == "gap"
    assert results["datasets"]["beta"]["map-untuned"]["splits"] == [0, 1]  # one gap split per input dimension
    assert "Gap splits" in (out / "report-gap.md").read_text()
    assert "report-gap.md" in capsys.readouterr().out
    code = main(["uci", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--no-progress"])
    assert code == 2
    assert "--download" in capsys.readouterr().err


def test_hmc_reference_cell_runs_on_small_datasets_only(data_dir: Path, tmp_path: Path) -> None:
    tiny_hmc = Budget(splits=1, min_steps=1, max_steps=1, n_samples=1, hmc_splits=1, hmc_scale=0.03)
    results = run_uci(data_dir, tmp_path / "h", datasets=["beta"], methods=["hmc"], budget=tiny_hmc, progress=False)
    entry = results["datasets"]["beta"]["hmc"]
    assert entry["n_splits"] == 1 and math.isfinite(entry["test_ll"]["mean"]) and entry["rhat_f_max"] >= 1.0
    assert "HMC convergence" in (tmp_path / "h" / "report.md").read_text()
    results = run_uci(data_dir, tmp_path / "h", datasets=["beta"], methods=["map", "hmc"], budget=tiny_hmc,
                      progress=False)
    paired = results["datasets"]["beta"]["map"]["test_ll_minus_hmc"]
    assert paired["splits"] == [0] and paired["mean"] == pytest.approx(
        results["datasets"]["beta"]["map"]["test_ll"]["per_split"][0] - entry["test_ll"]["per_split"][0])
    assert "minus HMC" in (tmp_path / "h" / "report.md").read_text()


def test_nuts_reference_cell_is_paired_and_judged_against_the_bar(data_dir: Path, tmp_path: Path) -> None:
    """``nuts`` runs as a reference beside ``hmc``: the same splits, its diagnostics, the bar, and every method's
    paired difference to it in the report."""
    pytest.importorskip("numpyro")
    tiny = Budget(splits=1, min_steps=1, max_steps=1, n_samples=1, hmc_splits=1, hmc_scale=0.03)
    results = run_uci(data_dir, tmp_path / "n", datasets=["beta"], methods=["map", "nuts"], budget=tiny,
                      progress=False)
    beta = results["datasets"]["beta"]
    nuts = beta["nuts"]
    assert nuts["n_splits"] == 1 and math.isfinite(nuts["test_ll"]["mean"]) and nuts["rhat_f_max"] >= 1.0
    assert nuts["splits_meeting_bar"] == 0  # 15 warm-up and 30 kept draws per chain cannot meet it
    assert beta["map"]["test_ll_minus_nuts"]["mean"] == pytest.approx(
        beta["map"]["test_ll"]["per_split"][0] - nuts["test_ll"]["per_split"][0])
    report = (tmp_path / "n" / "report.md").read_text()
    assert "Test LL minus NUTS's" in report and "met on 0 of 1 splits" in report
    cell = json.loads(cell_path(tmp_path / "n", "standard", "beta", "nuts", 0).read_text())
    assert cell["setting"] == {"method": "nuts", "chains": 4, "warmup": 15, "samples": 30, "init_steps": 100}


def test_merge_tabulates_the_other_methods_from_an_earlier_run(data_dir: Path, tmp_path: Path, capsys) -> None:
    """Rerun one method into a new folder: the others (and HMC) come from the earlier results.json, and the new
    method is paired with the earlier HMC cells."""
    tiny_hmc = Budget(splits=1, min_steps=1, max_steps=1, n_samples=1, hmc_splits=1, hmc_scale=0.03)
    earlier = run_uci(data_dir, tmp_path / "old", datasets=["beta"], methods=["map", "hmc"], budget=tiny_hmc,
                      progress=False)
    merged = run_uci(data_dir, tmp_path / "new", datasets=["beta"], methods=["bbb"], budget=tiny_hmc,
                     progress=False, merge=tmp_path / "old" / "results.json")
    beta = merged["datasets"]["beta"]
    assert set(beta) == {"map", "hmc", "bbb"} and beta["map"] == earlier["datasets"]["beta"]["map"]
    assert beta["bbb"]["test_ll_minus_hmc"]["mean"] == pytest.approx(
        beta["bbb"]["test_ll"]["per_split"][0] - beta["hmc"]["test_ll"]["per_split"][0])
    assert set(merged["settings"]) == {"map", "bbb"} and merged["n_cells"] == 3
    assert merged["merged"]["methods"] == ["hmc", "map"]
    assert "Cells of hmc, map taken from an earlier run" in (tmp_path / "new" / "report.md").read_text()
    assert json.loads((tmp_path / "new" / "results.json").read_text())["merged"]["methods"] == ["hmc", "map"]
    with pytest.raises(ValueError, match="budget"):  # another protocol's table is refused
        run_uci(data_dir, tmp_path / "other", datasets=["beta"], methods=["bbb"], budget=TINY, progress=False,
                train=False, merge=tmp_path / "old" / "results.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a bbh uci results.json"):
        run_uci(data_dir, tmp_path / "other2", datasets=["beta"], methods=["bbb"], budget=TINY, progress=False,
                train=False, merge=tmp_path / "list.json")
    code = main(["uci", "--data-dir", str(data_dir), "--out", str(tmp_path / "cli"), "--methods", "bbb",
                 "--report-only", "--no-progress", "--merge", str(tmp_path / "missing.json")])
    assert code == 2 and "cannot read a results.json" in capsys.readouterr().err


def test_report_only_writes_tables_from_the_cells_of_several_processes(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    run_uci(data_dir, out, datasets=["alpha"], methods=["map"], budget=TINY, progress=False)   # "process 1"
    run_uci(data_dir, out, datasets=["beta"], methods=["map"], budget=TINY, progress=False)    # "process 2"
    assert set(json.loads((out / "results.json").read_text())["datasets"]) == {"beta"}       # its own cells only
    trained: list[dict] = []
    results = run_uci(data_dir, out, methods=["map", "bbb"], budget=TINY, progress=False, train=False,
                      on_cell=trained.append)
    assert not trained and results["missing_cells"] == 4                                      # bbb not run
    assert set(results["datasets"]) == {"alpha", "beta"} and "4 cells of the grid not run yet" in (
        out / "report.md").read_text()



def test_one_gap_split_per_input_dimension(data_dir: Path, tmp_path: Path) -> None:
    every = Budget(splits=None, min_steps=5, max_steps=5, n_samples=2)
    results = run_uci(data_dir, tmp_path / "g", datasets=["alpha"], methods=["map"], budget=every,
                      split_kind="gap", progress=False)
    assert results["datasets"]["alpha"]["map"]["splits"] == [0, 1, 2]  # alpha has 3 inputs


def test_repeated_names_count_once(data_dir: Path, tmp_path: Path) -> None:
    results = run_uci(data_dir, tmp_path / "r", datasets=["beta", "beta"], methods=["map", "map"], budget=TINY,
                      progress=False)
    assert results["datasets"]["beta"]["map"]["splits"] == [0, 1] and results["n_cells"] == 2


def test_a_diverging_cell_is_recorded_as_failed_and_the_run_goes_on(data_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = uci.run_cell

    def flaky(dataset, method, k, **kwargs):  # type: ignore[no-untyped-def]
        if method == "bbb" and k == 1:
            raise FloatingPointError("non-finite value at step 3")
        return real(dataset, method, k, **kwargs)

    monkeypatch.setattr(uci, "run_cell", flaky)
    out = tmp_path / "f"
    results = run_uci(data_dir, out, datasets=["beta"], methods=["map", "bbb"], budget=TINY, progress=False)
    entry = results["datasets"]["beta"]["bbb"]
    assert entry["splits"] == [0] and entry["failed_splits"] == [1] and len(entry["test_ll"]["per_split"]) == 1
    assert "(1 diverged)" in (out / "report.md").read_text()
    trained: list[dict] = []
    run_uci(data_dir, out, datasets=["beta"], methods=["map", "bbb"], budget=TINY, progress=False,
            on_cell=trained.append)
    assert not trained  # the failed cell is not retried (its seed is fixed, it would fail again)


def test_non_finite_scores_are_a_failure(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uci.cells, "score", lambda *a, **k: {"test_ll": float("-inf"), "rmse": 1.0})
    with pytest.raises(FloatingPointError, match="non-finite test score"):
        run_cell(load_uci(data_dir / "uci" / "beta"), "map", 0, budget=TINY)


def test_resume_refuses_cells_of_other_settings_and_redoes_corrupt_ones(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    run_uci(data_dir, out, datasets=["beta"], methods=["map"], budget=TINY, progress=False)
    path = cell_path(out, "standard", "beta", "map", 0)
    path.write_text("{not json")
    trained: list[dict] = []
    run_uci(data_dir, out, datasets=["beta"], methods=["map"], budget=TINY, progress=False, on_cell=trained.append)
    assert [r["split"] for r in trained] == [0]  # the corrupt cell was redone, the other kept
    record = json.loads(path.read_text())
    record["setting"]["lr"] = 0.5
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="other map settings"):
        run_uci(data_dir, out, datasets=["beta"], methods=["map"], budget=TINY, progress=False)
    (out / "uci-run.json").write_text("garbage")
    with pytest.raises(ValueError, match="unreadable"):
        run_uci(data_dir, out, datasets=["beta"], methods=["map"], budget=TINY, progress=False)


def test_hmc_skips_datasets_above_the_row_limit(data_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uci, "HMC_MAX_ROWS", 10)
    results = run_uci(data_dir, tmp_path / "x", datasets=["beta"], methods=["hmc"], budget=TINY, progress=False)
    assert results["n_cells"] == 0 and results["missing_cells"] == 0


def test_hidden_units_fall_back_to_the_published_choice(tmp_path: Path) -> None:
    """Without ``n_hidden.txt``: 100 units for protein (Hernández-Lobato & Adams 2015), 50 elsewhere."""
    for name, expected in (("protein-tertiary-structure", 100), ("yacht", 50)):
        folder = _dataset(tmp_path / name)
        (folder / "n_hidden.txt").unlink()
        assert uci.protocol_hidden(load_uci(folder)) == expected
    assert uci.protocol_hidden(load_uci(_dataset(tmp_path / "with-file"))) == 8  # the file wins


def test_more_splits_than_the_folder_has_warns(data_dir: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="alpha has 3 standard splits; --splits 5 runs all 3"):
        run_uci(data_dir, tmp_path / "out", datasets=["alpha"], methods=["map"], splits=5, budget=TINY,
                progress=False, train=False)


def test_selection_grid_is_factors_of_the_budget_length() -> None:
    bbh = uci.uci_settings()["bbh"]
    assert uci.selection_grid(bbh, uci.BUDGETS["full"]) == [2000, 4000, 8000, 16000]
    assert uci.selection_grid(bbh, Budget(None, 20, 40, 1)) == [10, 20, 40, 80]
    with pytest.raises(ValueError, match="select_steps"):
        uci.selection_grid(uci.uci_settings()["map-untuned"], TINY)


def test_selection_scores_the_carve_out_at_each_length_without_test_data(data_dir: Path) -> None:
    """Each grid length's validation LL is what a run of that length scores on the carve-out (the scoring on the
    way leaves the training as it is), the choice is the best mean, and test targets are never read (NaN there
    changes nothing)."""
    dataset = load_uci(data_dir / "uci" / "alpha")
    chosen = uci.select_on_validation(dataset, "bbh", budget=TINY)
    assert chosen["grid"] == [10, 20, 40, 80] and chosen["splits"] == [0]  # split 0's own carve-out
    by_scale = chosen["mean_val_ll_by_scale"]  # BbH calibrates its σ: length and c are chosen together
    assert chosen["steps"] == max(chosen["grid"], key=lambda g: max(by_scale[str(g)]))
    assert chosen["calibrated_val_ll"] == max(by_scale[str(chosen["steps"])])
    assert chosen["mean_val_ll"][str(chosen["steps"])] == by_scale[str(chosen["steps"])][uci.NOISE_SCALES.index(1.0)]
    assert uci.select_on_validation(dataset, "map", split=2, budget=TINY)["splits"] == [2]
    for g in (10, 80):
        again = run_cell(dataset, "bbh", 0, budget=TINY, validation=0.2, steps=g)
        assert again["scored"] == "validation" and again["selected_steps"] == g
        assert chosen["val_ll"][str(g)][0] == pytest.approx(again["test_ll"], abs=1e-9)
    poisoned = load_uci(data_dir / "uci" / "alpha")  # split 0 only is used: poison its test rows
    poisoned.y[poisoned.split(0).test_idx] = float("nan")
    assert uci.select_on_validation(poisoned, "bbh", budget=TINY)["val_ll"] == chosen["val_ll"]


def test_scale_noise_is_the_mixture_with_every_sigma_times_c(tmp_path: Path) -> None:
    """c = 2 on one draw N(μ = 0.5, σ² = 0.25) at y = 0 (standardised, y_std = 1): log N(0; 0.5, 4 · 0.25)."""
    dataset = load_uci(_dataset(tmp_path / "d"))
    split = dataset.split(0)
    split.y_mean, split.y_std = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    predictive = RegressionPredictive(torch.tensor([[[0.5]]], dtype=torch.float64),
                                      torch.tensor([[[0.25]]], dtype=torch.float64))
    scaled = uci.scale_noise(predictive, 2.0)
    expected = -0.5 * math.log(2 * math.pi * 1.0) - 0.5 ** 2 / (2 * 1.0)
    zero = torch.tensor([0.0])
    assert score(scaled, split, zero, zero)["test_ll"] == pytest.approx(expected, abs=1e-12)
    assert torch.equal(scaled.sample_means, predictive.sample_means)
    assert uci.scale_noise(predictive, 1.0) is predictive
    from bbh.core.predictive import Predictive
    with pytest.raises(TypeError, match="regression predictive"):
        uci.scale_noise(Predictive(torch.full((2, 1, 3), 1 / 3)), 2.0)


def test_mc_dropout_chooses_its_rate_and_noise_scale_on_validation_and_cells_use_them(data_dir: Path,
                                                                                       tmp_path: Path) -> None:
    """MC-Dropout's dropout rate and σ scale c are the argmax of the carve-outs' mean validation LL over its rates
    and :data:`NOISE_SCALES` (at the protocol's length: nothing else is chosen), that LL is what a validation
    cell with the same rate and c scores, c = 1 is among the candidates, and a run's cells use the stored
    choice."""
    setting = replace(uci.uci_settings()["mc-dropout"], select_steps=())   # the rate and c alone
    assert setting.calibrate_noise and setting.select_dropout == (0.005, 0.01, 0.05, 0.1)
    assert 1.0 in uci.NOISE_SCALES and min(uci.NOISE_SCALES) == 0.25 and max(uci.NOISE_SCALES) == 2.0
    dataset = load_uci(data_dir / "uci" / "alpha")
    chosen = uci.select_on_validation(dataset, "mc-dropout", budget=TINY, setting=setting)
    assert chosen["steps"] is None and chosen["grid"] == [0]
    assert chosen["dropout"] in setting.select_dropout
    by_rate = chosen["best_val_ll_by_dropout"]
    assert set(by_rate) == {str(r) for r in setting.select_dropout}
    assert chosen["calibrated_val_ll"] == max(by_rate.values()) == by_rate[str(chosen["dropout"])]
    by_scale = chosen["mean_val_ll_by_scale"]["0"]  # the chosen rate's
    assert len(by_scale) == len(uci.NOISE_SCALES)
    assert chosen["noise_scale"] == uci.NOISE_SCALES[max(range(len(by_scale)), key=by_scale.__getitem__)]
    assert chosen["calibrated_val_ll"] == max(by_scale) >= chosen["mean_val_ll"]["0"]
    assert chosen["mean_val_ll"]["0"] == by_scale[uci.NOISE_SCALES.index(1.0)]
    again = run_cell(dataset, "mc-dropout", 0, budget=TINY, validation=0.2, noise_scale=chosen["noise_scale"],
                     dropout=chosen["dropout"], setting=setting)
    assert again["noise_scale"] == chosen["noise_scale"] and again["selected_dropout"] == chosen["dropout"]
    assert again["test_ll"] == pytest.approx(chosen["calibrated_val_ll"], abs=1e-9)  # one split: the mean is it
    with pytest.raises(ValueError, match="chooses nothing"):
        uci.select_on_validation(dataset, "map-untuned", budget=TINY)
    out = tmp_path / "out"
    results = run_uci(data_dir, out, datasets=["alpha"], methods=["mc-dropout"], budget=TINY, progress=False)
    tuned = uci.uci_settings()["mc-dropout"]
    stored = [json.loads(uci.selection_path(out, "standard", "alpha", "mc-dropout", k).read_text()) for k in range(2)]
    cells = [json.loads(cell_path(out, "standard", "alpha", "mc-dropout", k).read_text()) for k in range(2)]
    assert [s["splits"] for s in stored] == [[0], [1]]               # each split chose on its own carve-out
    assert all(c["noise_scale"] == st["noise_scale"] and c["selected_dropout"] == st["dropout"]
               and c["selected_steps"] == st["steps"] and c["setting"] == tuned.describe()
               for c, st in zip(cells, stored))
    entry = results["datasets"]["alpha"]["mc-dropout"]
    assert sum(entry["noise_scale"].values()) == 2 and sum(entry["selected_dropout"].values()) == 2
    report = (out / "report.md").read_text()
    assert "## Chosen on validation" in report and "that split's own validation" in report


def test_run_chooses_once_per_split_on_its_own_carve_out_and_records_it(data_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, object]] = []
    select = uci.select_on_validation

    def counted(dataset: uci.UCIDataset, method: str, **kwargs: object) -> dict[str, object]:
        calls.append((dataset.name, kwargs["split"]))
        return select(dataset, method, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(uci, "select_on_validation", counted)
    out = tmp_path / "out"
    results = run_uci(data_dir, out, datasets=["alpha"], methods=["bbh"], budget=TINY, progress=False)
    assert calls == [("alpha", 0), ("alpha", 1)]
    stored = [json.loads(uci.selection_path(out, "standard", "alpha", "bbh", k).read_text()) for k in range(2)]
    cells = [json.loads(cell_path(out, "standard", "alpha", "bbh", k).read_text()) for k in range(2)]
    assert all(c["selected_steps"] == st["steps"] and c["steps"] >= st["steps"] for c, st in zip(cells, stored))
    assert sum(results["datasets"]["alpha"]["bbh"]["selected_steps"].values()) == 2
    bbh_cells = [json.loads(cell_path(out, "standard", "alpha", "bbh", k).read_text()) for k in (0, 1)]
    edges = sum(c["length_at_edge"] for c in bbh_cells)  # shortest or longest length offered
    assert edges == sum(c["selected_steps"] in (min(st["grid"]), max(st["grid"])) for c, st in zip(bbh_cells, stored))
    assert results["datasets"]["alpha"]["bbh"]["lengths_at_edge"] == edges
    assert f"| {edges} of 2 |" in (out / "report.md").read_text()
    assert "| alpha | bbh |" in (out / "report.md").read_text()
    cell_path(out, "standard", "alpha", "bbh", 1).unlink()  # resume: the stored choice is reused
    run_uci(data_dir, out, datasets=["alpha"], methods=["bbh"], budget=TINY, progress=False)
    assert calls == [("alpha", 0), ("alpha", 1)]


def test_no_choice_can_see_a_test_row_of_any_split(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Split k's choices train and score on rows of split k's training part only (its carve-out included), and
    what they touch is exactly those rows: poisoning every other row (split k's test rows) changes nothing."""
    dataset = load_uci(data_dir / "uci" / "alpha")
    for k in range(dataset.n_splits):
        fit_rows, val_rows = uci.selection_rows(dataset, k)
        split = dataset.split(k)
        train, test = set(split.train_idx.tolist()), set(split.test_idx.tolist())
        assert set(fit_rows.tolist()) | set(val_rows.tolist()) == train
        assert not set(val_rows.tolist()) & set(fit_rows.tolist())
        assert not (set(fit_rows.tolist()) | set(val_rows.tolist())) & test
    seen: list[Tensor] = []
    original = UCIDataset.split

    def spy(self: UCIDataset, k: int, *args: object, **kwargs: object) -> object:
        part = original(self, k, *args, **kwargs)
        seen.append(part.train_idx)
        if part.val_idx is not None:
            seen.append(part.val_idx)
        return part

    monkeypatch.setattr(UCIDataset, "split", spy)
    chosen = uci.select_on_validation(dataset, "map", split=1, budget=TINY)
    touched = set(torch.cat(seen).tolist())
    assert touched <= set(original(dataset, 1).train_idx.tolist())
    monkeypatch.setattr(UCIDataset, "split", original)
    poisoned = load_uci(data_dir / "uci" / "alpha")
    poisoned.y[poisoned.split(1).test_idx] = float("nan")
    assert uci.select_on_validation(poisoned, "map", split=1, budget=TINY)["val_ll"] == chosen["val_ll"]


def test_every_method_has_the_hmc_references_prior_and_one_tuning_protocol() -> None:
    """N(0, 1) on every weight and bias for every method (the deep ensemble has none, as published), the prior of
    the HMC and NUTS references; every tuned method chooses its length and c; every untuned one chooses nothing."""
    import inspect

    from bbh.reference.hmc_regression import hmc_regression
    from bbh.reference.nuts import nuts_regression

    reference = inspect.signature(hmc_regression).parameters["prior_scale"].default
    assert reference == inspect.signature(nuts_regression).parameters["prior_scale"].default == 1.0
    settings = uci.uci_settings()
    assert set(settings) == set(uci.GRID_METHODS)
    for name in uci.GRID_METHODS:
        method = uci.build_method(settings[name], 3, 4)
        expected = None if name.startswith("ensemble") else reference
        assert uci.prior_std(method) == expected, name
    for m in uci.UCI_METHODS:
        assert settings[m].select_steps == uci.TUNED_LENGTHS and settings[m].calibrate_noise, m
        assert not settings[m + uci.UNTUNED].selects, m
