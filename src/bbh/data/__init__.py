"""Data sets: the toy regression, and the real tasks (MNIST + notMNIST, CIFAR-5) with their preprocessing."""

from .batches import MemberBatches
from .cifar import load_cifar10, load_cifar_batch
from .download import (
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

__all__ = [
    "ChecksumError",
    "DataFormatError",
    "DownloadError",
    "MemberBatches",
    "MissingDataError",
    "Task",
    "available_tasks",
    "download_file",
    "ensure_datasets",
    "load_cifar10",
    "load_cifar_batch",
    "load_mnist",
    "load_notmnist",
    "load_task",
    "make_toy_data",
    "read_idx",
    "resolve_data_dir",
    "split_validation",
    "toy_function",
    "toy_grid",
]
