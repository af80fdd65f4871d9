"""Data sets: the toy regression, the real tasks (MNIST + notMNIST, CIFAR-5), and the UCI regression benchmark."""

from .batches import MemberBatches
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
from .tasks import Task, available_tasks, load_task
from .toy import make_toy_data, toy_function, toy_grid
from .uci import UCIDataset, UCISplit, gap_splits, load_uci, uci_datasets
from .uci_download import ensure_uci

__all__ = [
    "UCI_NAMES",
    "ChecksumError",
    "DataFormatError",
    "DownloadError",
    "MemberBatches",
    "MissingDataError",
    "Task",
    "UCIDataset",
    "UCISplit",
    "available_tasks",
    "download_file",
    "ensure_datasets",
    "ensure_uci",
    "gap_splits",
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
