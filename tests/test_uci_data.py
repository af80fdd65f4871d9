"""The UCI regression data layer (bbh.data.uci) on small synthetic folders in the published layout."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from bbh.data import DataFormatError, UCIDataset, gap_splits, load_uci, uci_datasets

N_ROWS, N_FEATURES, N_SPLITS = 30, 3, 3


def write_uci_folder(folder: Path, data: np.ndarray, features: list[int], target: int,
                     splits: list[tuple[list[int], list[int]]], n_splits: int | None = None,
                     n_hidden: int | None = 50, n_epochs: int | None = 40, sep: str = " ") -> Path:
    """Write a dataset folder in the standard layout (the one the published experiment code reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.txt").write_text("".join(sep.join(f"{v:.10g}" for v in row) + "\n" for row in data))
    (folder / "index_features.txt").write_text("".join(f"{c}\n" for c in features))
    (folder / "index_target.txt").write_text(f"{target}\n")
    for k, (train, test) in enumerate(splits):
        (folder / f"index_train_{k}.txt").write_text("".join(f"{r}\n" for r in train))
        (folder / f"index_test_{k}.txt").write_text("".join(f"{r}\n" for r in test))
    (folder / "n_splits.txt").write_text(f"{len(splits) if n_splits is None else n_splits}\n")
    if n_hidden is not None:
        (folder / "n_hidden.txt").write_text(f"{n_hidden}\n")
    if n_epochs is not None:
        (folder / "n_epochs.txt").write_text(f"{n_epochs}\n")
    return folder


def synthetic(seed: int = 0) -> tuple[np.ndarray, list[tuple[list[int], list[int]]]]:
    """30 rows: 3 features + an unused column + target (column 4), and 3 random 80/20 splits."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(N_ROWS, 5)) * [1.0, 5.0, 0.1, 3.0, 7.0] + [0.0, 10.0, -3.0, 1.0, 50.0]
    splits = []
    for _ in range(N_SPLITS):
        perm = rng.permutation(N_ROWS).tolist()
        splits.append((perm[:24], perm[24:]))
    return data, splits


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    data, splits = synthetic()
    return write_uci_folder(tmp_path / "synth", data, [0, 1, 2], 4, splits)


def test_loads_the_standard_layout(folder: Path) -> None:
    data, splits = synthetic()
    ds = load_uci(folder)
    assert ds.name == "synth"
    assert ds.x.shape == (N_ROWS, N_FEATURES) and ds.y.shape == (N_ROWS,)
    assert ds.x.dtype == torch.float64
    torch.testing.assert_close(ds.x, torch.tensor(data[:, :3]))
    torch.testing.assert_close(ds.y, torch.tensor(data[:, 4]))
    assert ds.n_splits == N_SPLITS and (ds.n_hidden, ds.n_epochs) == (50, 40)
    for (train, test), (train_written, test_written) in zip(ds.splits, splits):
        assert train.dtype == torch.long
        assert train.tolist() == train_written and test.tolist() == test_written
    assert load_uci(folder, dtype=torch.float32).x.dtype == torch.float32


def test_tolerates_real_file_formatting(tmp_path: Path) -> None:
    data, splits = synthetic()
    folder = write_uci_folder(tmp_path / "tabs", data, [0, 1, 2], 4, splits, sep=" \t", n_hidden=None, n_epochs=None)
    text = (folder / "data.txt").read_text().splitlines()
    (folder / "data.txt").write_text("".join(f"  {line} \n" for line in text) + "\n\n")  # padded, trailing blanks
    (folder / "index_target.txt").write_text("4.0\n\n")  # an integral float, a blank line
    ds = load_uci(folder)
    torch.testing.assert_close(ds.y, torch.tensor(data[:, 4]))
    assert ds.n_hidden is None and ds.n_epochs is None


def _replace(name: str, text: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        (folder / name).write_text(text)
    return edit


def _delete(name: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        (folder / name).unlink()
    return edit


def _overlap(folder: Path) -> None:
    train = (folder / "index_train_2.txt").read_text()
    first_train_row = train.split()[0]
    (folder / "index_test_2.txt").write_text((folder / "index_test_2.txt").read_text() + f"{first_train_row}\n")


def _duplicate(folder: Path) -> None:
    train = (folder / "index_train_0.txt").read_text()
    (folder / "index_train_0.txt").write_text(train + train.split()[0] + "\n")


@pytest.mark.parametrize(("edit", "error", "filename", "words"), [
    (_replace("index_train_1.txt", "3\n4\nfive\n"), DataFormatError, "index_train_1.txt", "not an integer"),
    (_replace("index_test_2.txt", "3\n30\n"), DataFormatError, "index_test_2.txt", "out of range"),
    (_replace("index_test_2.txt", "-1\n"), DataFormatError, "index_test_2.txt", "out of range"),
    (_overlap, DataFormatError, "index_test_2.txt", "overlap"),
    (_duplicate, DataFormatError, "index_train_0.txt", "more than once"),
    (_replace("n_splits.txt", "4\n"), DataFormatError, "n_splits.txt", "4 splits"),
    (_replace("n_splits.txt", "2\n"), DataFormatError, "n_splits.txt", "2 splits"),
    (_delete("n_splits.txt"), FileNotFoundError, "n_splits.txt", "missing"),
    (_delete("index_test_1.txt"), FileNotFoundError, "index_test_1.txt", "missing"),
    (_delete("data.txt"), FileNotFoundError, "data.txt", "missing"),
    (_replace("data.txt", "1 2 3 4 5\n1 2 3 4\n"), DataFormatError, "data.txt", "ragged"),
    (_replace("data.txt", "1 2 3 4 5\n1 2 x 4 5\n"), DataFormatError, "data.txt", "not a number"),
    (_replace("index_features.txt", "0\n1\n5\n"), DataFormatError, "index_features.txt", "out of range"),
    (_replace("index_target.txt", "7\n"), DataFormatError, "index_target.txt", "out of range"),
    (_replace("index_target.txt", "1\n"), DataFormatError, "index_target.txt", "also listed"),
])
def test_malformed_folder_gives_a_clear_error_naming_the_file(folder: Path, edit: Callable[[Path], None], error: type,
                                                              filename: str, words: str) -> None:
    load_uci(folder)  # well-formed before the edit
    edit(folder)
    with pytest.raises(error, match=re.escape(filename)) as info:
        load_uci(folder)
    assert words in str(info.value)


def test_standardisation_round_trip(folder: Path) -> None:
    ds = load_uci(folder)
    s = ds.split(1)
    train, test = ds.splits[1]
    assert s.train_idx.tolist() == train.tolist() and s.test_idx.tolist() == test.tolist()
    torch.testing.assert_close(s.x_train.mean(0), torch.zeros(N_FEATURES, dtype=torch.float64))
    torch.testing.assert_close(s.x_train.std(0, correction=0), torch.ones(N_FEATURES, dtype=torch.float64))
    assert abs(float(s.y_train.mean())) < 1e-12 and abs(float(s.y_train.std(correction=0)) - 1) < 1e-12
    # the test part uses the TRAINING statistics, not its own
    torch.testing.assert_close(s.x_test, (ds.x[test] - ds.x[train].mean(0)) / ds.x[train].std(0, correction=0))
    assert abs(float(s.y_test.mean())) > 1e-6
    torch.testing.assert_close(s.unstandardise_mean(s.y_test), ds.y[test])
    torch.testing.assert_close(s.unstandardise_std(torch.tensor(2.0, dtype=torch.float64)),
                               2 * ds.y[train].std(correction=0))

    # log-density shift = change of variables, checked with Normal in both unit systems
    mu_s = torch.linspace(-1, 1, len(test), dtype=torch.float64)
    sigma_s = torch.linspace(0.3, 1.5, len(test), dtype=torch.float64)
    log_p_std = torch.distributions.Normal(mu_s, sigma_s).log_prob(s.y_test)
    normal_orig = torch.distributions.Normal(s.unstandardise_mean(mu_s), s.unstandardise_std(sigma_s))
    log_p_orig = normal_orig.log_prob(ds.y[test])
    torch.testing.assert_close(s.unstandardise_log_density(log_p_std), log_p_orig)
    assert s.log_density_shift == pytest.approx(-math.log(float(ds.y[train].std(correction=0))))


def test_zero_std_feature_is_divided_by_one_and_no_standardisation_keeps_raw_values(tmp_path: Path) -> None:
    data, splits = synthetic()
    data[:, 1] = 4.0
    ds = load_uci(write_uci_folder(tmp_path / "const", data, [0, 1, 2], 4, splits))
    s = ds.split(0)
    assert float(s.x_std[1]) == 1.0
    assert torch.all(s.x_train[:, 1] == 0) and torch.all(s.x_test[:, 1] == 0)
    raw = ds.split(0, standardise=False)
    torch.testing.assert_close(raw.x_test, ds.x[ds.splits[0][1]])
    torch.testing.assert_close(raw.unstandardise_mean(raw.y_train), ds.y[ds.splits[0][0]])


def test_validation_carve_out(folder: Path) -> None:
    ds = load_uci(folder)
    train, test = ds.splits[2]
    s = ds.split(2, validation=0.2)
    assert len(s.val_idx) == round(0.2 * len(train)) and len(s.train_idx) == len(train) - len(s.val_idx)
    assert not set(s.val_idx.tolist()) & set(s.train_idx.tolist())
    assert not set(s.val_idx.tolist()) & set(test.tolist())
    assert sorted(s.val_idx.tolist() + s.train_idx.tolist()) == sorted(train.tolist())
    assert s.test_idx.tolist() == test.tolist()
    # the last 20 % of a seeded permutation of the training indices
    perm = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))]
    assert s.val_idx.tolist() == perm[-len(s.val_idx):].tolist()
    # deterministic; another seed carves out another part
    again = ds.split(2, validation=0.2)
    assert again.val_idx.tolist() == s.val_idx.tolist()
    torch.testing.assert_close(again.x_val, s.x_val)
    assert ds.split(2, validation=0.2, seed=1).val_idx.tolist() != s.val_idx.tolist()
    # statistics of the remaining training part only
    rest = s.train_idx
    torch.testing.assert_close(s.x_mean, ds.x[rest].mean(0))
    torch.testing.assert_close(s.y_std, ds.y[rest].std(correction=0))
    torch.testing.assert_close(s.x_val, (ds.x[s.val_idx] - ds.x[rest].mean(0)) / ds.x[rest].std(0, correction=0))
    torch.testing.assert_close(s.unstandardise_mean(s.y_val), ds.y[s.val_idx])
    assert ds.split(2).val_idx is None and ds.split(2).x_val is None
    for bad in (0.0, 1.0, 0.001, 1.5):
        with pytest.raises(ValueError, match="validation"):
            ds.split(2, validation=bad)


def test_gap_splits_hold_out_the_middle_third_of_each_continuous_dimension(tmp_path: Path) -> None:
    data, splits = synthetic()
    data[:, 2] = np.arange(N_ROWS) % 4  # 4 values, tied across both cuts of the middle third: no gap
    ds = load_uci(write_uci_folder(tmp_path / "gap", data, [0, 1, 2], 4, splits))
    gaps = gap_splits(ds)
    assert list(gaps) == ds.gap_dimensions == [0, 1]  # the continuous dimensions; dimension 2 is skipped
    for d, (train, test) in gaps.items():
        order = np.argsort(data[:, d], kind="stable")
        assert test.tolist() == sorted(order[10:20].tolist())  # no ties: the plain middle third
        assert train.tolist() == sorted(order[:10].tolist() + order[20:].tolist())
        assert sorted(train.tolist() + test.tolist()) == list(range(N_ROWS))
        train_values, test_values = set(ds.x[train, d].tolist()), set(ds.x[test, d].tolist())
        assert not train_values & test_values
        assert min(train_values) < min(test_values) and max(test_values) < max(train_values)
    s = ds.split(1, kind="gap")
    assert s.train_idx.tolist() == gaps[1][0].tolist() and s.test_idx.tolist() == gaps[1][1].tolist()
    with pytest.raises(ValueError, match=r"input dimension 2 has no gap split.*gap dimensions: \[0, 1\]"):
        ds.split(2, kind="gap")
    with pytest.raises(IndexError):
        ds.split(N_FEATURES, kind="gap")
    with pytest.raises(ValueError, match="kind"):
        ds.split(0, kind="middle")
    # sorting by the few-valued dimension leaves test values in training: the reason it is skipped
    order = np.argsort(data[:, 2], kind="stable")
    assert set(data[order[10:20], 2]) & set(data[np.r_[order[:10], order[20:]], 2])


def test_gap_split_cuts_move_off_ties_within_the_tolerance() -> None:
    n = 48  # cuts at sorted positions 16 and 32; each may move GAP_CUT_TOLERANCE * 48 = 2 rows
    near = torch.arange(n, dtype=torch.float64)
    near[16], near[32] = 15.0, 31.0  # one tie across each cut: positions 15/16 hold 15, 31/32 hold 31
    far = torch.arange(n, dtype=torch.float64)
    far[13:20] = 13.0  # tied positions 13..19: the nearest cuts (13, 20) are 3 and 4 rows away
    ds = UCIDataset(name="t", x=torch.stack([near, far], 1), y=torch.zeros(n, dtype=torch.float64), splits=[])
    assert ds.gap_dimensions == [0]
    train, test = ds.gap_splits()[0]
    # 15 and 16 are equally near the lower cut, 31 and 33 the upper one: the later one is taken
    assert test.tolist() == list(range(17, 33))
    assert not set(near[train].tolist()) & set(near[test].tolist())
    with pytest.raises(ValueError, match=r"gap dimensions: \[0\]"):
        ds.split(1, kind="gap")
    constant = UCIDataset(name="c", x=torch.ones(n, 1, dtype=torch.float64), y=torch.zeros(n), splits=[])
    assert constant.gap_dimensions == []
    with pytest.raises(ValueError, match="gap dimensions: none"):
        constant.split(0, kind="gap")


def test_gap_splits_with_rows_not_divisible_by_three() -> None:
    x = torch.arange(31, 0, -1, dtype=torch.float64).unsqueeze(1)  # decreasing: row r has rank 30 - r
    ds = UCIDataset(name="t", x=x, y=torch.zeros(31, dtype=torch.float64), splits=[])
    (train, test), = gap_splits(ds).values()
    assert test.tolist() == list(range(10, 21)) and len(train) == 20


def test_uci_datasets_finds_only_well_formed_folders(tmp_path: Path) -> None:
    data, splits = synthetic()
    for name in ("b_set", "a_set"):
        write_uci_folder(tmp_path / name, data, [0, 1, 2], 4, splits)
    (write_uci_folder(tmp_path / "no_data", data, [0, 1, 2], 4, splits) / "data.txt").unlink()
    (write_uci_folder(tmp_path / "no_target", data, [0, 1, 2], 4, splits) / "index_target.txt").unlink()
    (write_uci_folder(tmp_path / "no_splits", data, [0, 1, 2], 4, []) / "n_splits.txt").write_text("1\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "data.txt").write_text("1 2\n")
    assert uci_datasets(tmp_path) == ["a_set", "b_set"]
    with pytest.raises(FileNotFoundError):
        uci_datasets(tmp_path / "nowhere")
