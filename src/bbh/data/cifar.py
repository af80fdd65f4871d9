"""CIFAR-10 from the official python batches, and the CIFAR-5 split of the paper (docs/protocol.md §5.3, 6.3).

Each batch (``data_batch_1..5``, ``test_batch`` in ``cifar-10-batches-py/``) is a pickled dict with
``data`` (uint8 [N, 3072]: the R plane, then G, then B, each 32x32 row-major) and ``labels`` (N ints);
``batch_label`` and ``filenames`` are not needed (the shared copy lacks ``filenames``). Keys may be bytes
(``pickle.load(encoding='bytes')`` of the Python 2 pickles) or str.

The pickles are read with a restricted unpickler that only builds numpy arrays and plain Python values,
so a tampered file cannot run code. Corrupt, truncated or mis-shaped batches raise
:class:`~bbh.data.mnist.DataFormatError` naming the file.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .mnist import DataFormatError

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CIFAR_FILES = (*TRAIN_BATCHES, TEST_BATCH)
NUM_CLASSES = 10
ROW = 3 * 32 * 32
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# (module, name) that a CIFAR batch pickle may reference -> where the object lives in this numpy
_ALLOWED_GLOBALS: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("numpy.core.multiarray", "_reconstruct"): (("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): (("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): (("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): (("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer"),
    ("numpy", "ndarray"): (("numpy",), "ndarray"),
    ("numpy", "dtype"): (("numpy",), "dtype"),
    ("_codecs", "encode"): (("_codecs",), "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except those needed to rebuild numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (not a CIFAR batch)")
        candidates, attr = _ALLOWED_GLOBALS[(module, name)]
        for mod in candidates:
            try:
                return getattr(importlib.import_module(mod), attr)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"{module}.{name} is not available in this numpy")


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as e:  # UnpicklingError, EOFError (truncated), ValueError, ... all mean "unreadable"
        raise DataFormatError(f"{path}: not a readable CIFAR batch pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: the pickle holds a {type(obj).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def load_cifar_batch(path: str | Path) -> tuple[Tensor, Tensor]:
    """One CIFAR-10 python batch as uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``."""
    path = Path(path)
    batch = _unpickle(path)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataFormatError(f"{path}: missing key(s) {', '.join(missing)} (found: {', '.join(sorted(batch))})")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{path}: 'data' is a {desc}, expected a uint8 array [N, {ROW}]")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataFormatError(f"{path}: 'labels' are not integers ({e})") from e
    if y.ndim != 1 or len(y) != len(data):
        raise DataFormatError(f"{path}: {y.size} labels for {len(data)} images")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DataFormatError(f"{path}: labels outside 0..{NUM_CLASSES - 1} (min {y.min()}, max {y.max()})")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(y)


def load_cifar10(folder: str | Path, split: str = "train") -> tuple[Tensor, Tensor]:
    """CIFAR-10 ``split`` ("train": the 5 data batches, 50,000 images; "test": 10,000) from ``folder``.

    ``folder`` is the ``cifar-10-batches-py`` directory. Returns uint8 ``[N, 3, 32, 32]`` and int64 ``[N]``
    in the files' order.
    """
    names = {"train": TRAIN_BATCHES, "test": (TEST_BATCH,)}
    if split not in names:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; valid: {', '.join(names)}")
    parts = [load_cifar_batch(Path(folder) / name) for name in names[split]]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def select_classes(x: Tensor, y: Tensor, classes: tuple[int, ...] | range) -> tuple[Tensor, Tensor]:
    """The examples whose label is in ``classes``, in their original order (labels unchanged)."""
    keep = torch.isin(y, torch.as_tensor(list(classes), dtype=y.dtype, device=y.device))
    return x[keep], y[keep]


__all__ = [
    "BATCHES_DIR",
    "CIFAR_FILES",
    "CLASS_NAMES",
    "load_cifar10",
    "load_cifar_batch",
    "select_classes",
]
