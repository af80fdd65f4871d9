"""MNIST and notMNIST from their gzipped IDX files (docs/protocol.md §5.2 and 6.3).

The IDX format (http://yann.lecun.com/exdb/mnist/): a 4-byte big-endian magic number ``0x0000TTDD``
(``TT`` the element type, 0x08 = unsigned byte; ``DD`` the number of dimensions), one 4-byte big-endian
size per dimension, then the values in row-major order. Image files have magic 2051 (three dimensions
N x 28 x 28), label files 2049 (one dimension N). notMNIST (the notMNIST-to-MNIST conversion) uses the
same format and file names.

Every check happens before anything is returned: a truncated, corrupt or mislabelled file raises
:class:`DataFormatError` naming the file and the problem, never a half-loaded array.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
UBYTE = 0x08
IMAGE_SIZE = 28
NUM_CLASSES = 10

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
NOTMNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
SPLIT_PREFIX = {"train": "train", "test": "t10k"}


class DataFormatError(ValueError):
    """A data file that exists but cannot be read as what it should be (corrupt, truncated, wrong shape)."""


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """The values of a gzipped IDX file as a uint8 array of the header's shape.

    Args:
        path: the ``.gz`` file.
        magic: the magic number the file must carry (2051 images, 2049 labels); ``None`` accepts any
            unsigned-byte IDX file.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: not gzip or a truncated gzip stream, a wrong magic number, or fewer / more bytes
            than the header announces.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut stream is an EOFError
        raise DataFormatError(f"{path}: not a readable gzip file ({type(e).__name__}: {e})") from e
    if len(data) < 4:
        raise DataFormatError(f"{path}: only {len(data)} bytes, too short for an IDX header")
    zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    found_magic = int.from_bytes(data[:4], "big")
    if zero != 0 or dtype_code != UBYTE or ndim == 0:
        raise DataFormatError(f"{path}: not an unsigned-byte IDX file (magic number {found_magic:#010x})")
    if magic is not None and found_magic != magic:
        raise DataFormatError(f"{path}: magic number {found_magic} where {magic} was expected "
                              f"({'images' if magic == IMAGES_MAGIC else 'labels'} file)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated header ({len(data)} bytes, {header} needed for {ndim} dimensions)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    found = len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "has trailing bytes"
        raise DataFormatError(f"{path}: {what}: the header announces shape {shape} ({expected} values), "
                              f"the file holds {found}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_pair(folder: str | Path, prefix: str) -> tuple[Tensor, Tensor]:
    """``{prefix}-images-idx3-ubyte.gz`` and ``{prefix}-labels-idx1-ubyte.gz`` in ``folder``.

    Returns uint8 images ``[N, 1, 28, 28]`` and int64 labels ``[N]`` (values 0..9), checked against each
    other.
    """
    folder = Path(folder)
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataFormatError(f"{images_path}: images of shape {images.shape[1:]}, expected "
                              f"({IMAGE_SIZE}, {IMAGE_SIZE})")
    if labels.ndim != 1:
        raise DataFormatError(f"{labels_path}: labels of shape {labels.shape}, expected one dimension")
    if len(labels) != len(images):
        raise DataFormatError(f"{labels_path} has {len(labels)} labels but {images_path} has {len(images)} images")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataFormatError(f"{labels_path}: label {int(labels.max())} outside 0..{NUM_CLASSES - 1}")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load_mnist(folder: str | Path, split: str = "train") -> tuple[Tensor, Tensor]:
    """The MNIST ``split`` ("train": 60,000, "test": 10,000) from the four official files in ``folder``.

    Returns uint8 images ``[N, 1, 28, 28]`` and int64 labels ``[N]``.
    """
    if split not in SPLIT_PREFIX:
        raise ValueError(f"unknown MNIST split {split!r}; valid: {', '.join(SPLIT_PREFIX)}")
    return load_idx_pair(folder, SPLIT_PREFIX[split])


def load_notmnist(folder: str | Path) -> tuple[Tensor, Tensor]:
    """The notMNIST test split (letters A-J as labels 0..9), the MNIST outlier set (docs/protocol.md §6.3).

    ``folder`` holds ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` from
    davidflanagan/notMNIST-to-MNIST. Returns uint8 ``[N, 1, 28, 28]`` and int64 ``[N]``.
    """
    return load_idx_pair(folder, "t10k")


def split_validation(x: Tensor, y: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Hold out the FIRST ``size`` examples as validation, as TensorFlow's ``read_data_sets`` does.

    TF (``tensorflow/contrib/learn/.../mnist.py``): ``validation_images = train_images[:validation_size]``,
    ``train_images = train_images[validation_size:]``; with ``size=5000`` this gives the authors' 55,000
    training images (docs/protocol.md §5.2). Returns ``(train_x, train_y, val_x, val_y)``.
    """
    if not 0 <= size <= len(x):
        raise ValueError(f"validation size must be in 0..{len(x)}, got {size}")
    if len(x) != len(y):
        raise ValueError(f"x and y have different numbers of examples: {len(x)} vs {len(y)}")
    return x[size:], y[size:], x[:size], y[:size]


__all__ = [
    "DataFormatError",
    "MNIST_FILES",
    "NOTMNIST_FILES",
    "load_idx_pair",
    "load_mnist",
    "load_notmnist",
    "read_idx",
    "split_validation",
]
