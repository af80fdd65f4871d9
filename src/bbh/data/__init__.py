"""Data sets: the toy regression, the real tasks (MNIST + notMNIST, CIFAR-5), and the UCI regression benchmark.

From Python, :func:`load` gives one data set's split as a ``TensorDataset`` of network-ready inputs and labels::

    import bbh
    test = bbh.data.load("mnist", "DATA", split="test")          # DATA/mnist/*.gz; nothing is downloaded
    outliers = bbh.data.load("notmnist", "DATA")
    results = bbh.evaluate(method, test.tensors, ood={"notmnist": outliers.tensors})

Nothing is downloaded unless asked (``download=True``, :func:`fetch`, the command line's ``--download``); files
that are not there raise :class:`MissingDataError` naming them and the folder, and nothing is created there.
:func:`load_task` loads a whole task for training (uint8 images with the paper's augmentation pipeline).
"""

from .batches import MemberBatches, as_batches
from .cifar import load_cifar10, load_cifar_batch
from .download import (
    UCI_NAMES,
    ChecksumError,
    DownloadError,
    MissingDataError,
    download_file,
    ensure_datasets,
    resolve_data_dir,
)
from .mnist import DataFormatError, load_mnist, load_notmnist, read_idx, split_validation
from .tasks import Task, available_tasks, fetch, load, load_task
from .toy import make_toy_data, toy_function, toy_grid
from .uci import UCIDataset, UCISplit, gap_splits, load_uci, uci_datasets
from .uci_download import ensure_uci

__all__ = [
    "UCI_NAMES",
    "ChecksumError",
    "DataFormatError",
    "DownloadError",
    "MemberBatches", "as_batches",
    "MissingDataError",
    "Task",
    "UCIDataset",
    "UCISplit",
    "available_tasks",
    "download_file",
    "ensure_datasets",
    "ensure_uci",
    "fetch",
    "gap_splits",
    "load",
    "load_cifar10",
    "load_cifar_batch",
    "load_mnist",
    "load_notmnist",
    "load_task",
    "load_uci",
    "make_toy_data",
    "read_idx",
    "resolve_data_dir",
    "split_validation",
    "toy_function",
    "toy_grid",
    "uci_datasets",
]
