"""The paper's classification tasks, MNIST (+ notMNIST outliers) and CIFAR-5 (docs/protocol.md §5.2, 5.3, 6.3),
and full CIFAR-10 (the scale comparison of docs/scale.md; no outlier set).

:func:`load` is the simple door: one data set and split as a ``TensorDataset`` of evaluation-ready float inputs
and int64 labels, for :func:`bbh.evaluate` or a ``DataLoader``::

    import bbh
    test = bbh.data.load("mnist", "DATA", split="test")              # DATA holds mnist/ (see below)
    results = bbh.evaluate(method, test.tensors, ood={"notmnist": bbh.data.load("notmnist", "DATA").tensors})

:func:`load_task` loads a whole task (train / validation / test / outliers as uint8 tensors) as a :class:`Task`
whose ``train_transform`` / ``eval_transform`` turn uint8 batches into the network's float inputs (on the
batch's device; see :mod:`bbh.data.transforms`); ``bbh train`` uses it.

Both read the data folder (:func:`~bbh.data.resolve_data_dir`: the ``data_dir`` argument, else
``$BBH_DATA_DIR``, else ``~/.cache/bbh/data``; layout ``mnist/``, ``notmnist/``, ``cifar10/cifar-10-batches-py/``,
:mod:`bbh.data.download`) and download nothing unless asked: files that are not there raise
:class:`~bbh.data.MissingDataError`, one line naming them and the folder, and nothing is created there.
``download=True`` (the command line's ``--download``; :func:`fetch` alone) fetches them from the official
sources, checksum-verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from .cifar import BATCHES_DIR, load_cifar10, select_classes
from .download import ensure_datasets
from .mnist import load_mnist, load_notmnist, split_validation
from .transforms import PIPELINES

MNIST_VALIDATION = 5_000
CIFAR5_CLASSES = range(0, 5)
CIFAR5_OUTLIER_CLASSES = range(5, 10)
CIFAR10_CLASSES = range(0, 10)
PREPROCESSING = ("paper", "standard")
TASKS = ("mnist", "cifar5", "cifar10")
DATASETS: dict[str, tuple[str, ...]] = {"mnist": ("mnist", "notmnist"), "notmnist": ("notmnist",),
                                        "cifar5": ("cifar10",), "cifar10": ("cifar10",)}
"""The data folders (:data:`bbh.data.download.RESOURCES`) each name of :func:`load` / :func:`fetch` reads: a task
includes its outlier set (MNIST's is notMNIST)."""
OUTLIER_SETS: dict[str, str | None] = {"mnist": "notMNIST test", "cifar5": "CIFAR-10 test classes 5-9",
                                       "cifar10": None}
"""Each task's out-of-distribution set; None: the task has none (CIFAR-10 uses every CIFAR-10 class, and bbh
ships no other data set to hold out), so ``outlier_x`` is None even with ``load_task(..., outliers=True)`` and
``bbh evaluate`` skips OOD detection, saying so."""


@dataclass
class Task:
    """A classification task: uint8 images, int64 labels, and its preprocessing.

    Attributes:
        name: ``"mnist"``, ``"cifar5"`` or ``"cifar10"``.
        num_classes: K.
        input_shape: the shape of one preprocessed input, ``(C, H, W)``.
        train_x, train_y: training images ``[N, C, H0, W0]`` (uint8) and labels ``[N]`` (int64).
        test_x, test_y: the in-distribution test set.
        outlier_x: the out-of-distribution set (notMNIST test / CIFAR-10 test classes 5-9); ``None`` when the
            task was loaded without it (``load_task(..., outliers=False)``: training needs no outliers) or has
            none (``cifar10``, see :data:`OUTLIER_SETS`).
        outlier_y: its labels where it has any (notMNIST letters 0..9, CIFAR classes 5..9), else ``None``.
        val_x, val_y: the validation split, if any (MNIST: TF's 5,000 held-out training images).
        preprocessing: ``"paper"`` or ``"standard"``.
        pipeline: the key of :data:`bbh.data.transforms.PIPELINES` used by the transforms.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    train_x: Tensor = field(repr=False)
    train_y: Tensor = field(repr=False)
    test_x: Tensor = field(repr=False)
    test_y: Tensor = field(repr=False)
    outlier_x: Tensor | None = field(default=None, repr=False)
    outlier_y: Tensor | None = field(default=None, repr=False)
    val_x: Tensor | None = field(default=None, repr=False)
    val_y: Tensor | None = field(default=None, repr=False)
    preprocessing: str = "paper"
    pipeline: str = "mnist"

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"unknown pipeline {self.pipeline!r}; valid: {', '.join(PIPELINES)}")
        for x, y in ((self.train_x, self.train_y), (self.test_x, self.test_y), (self.outlier_x, self.outlier_y),
                     (self.val_x, self.val_y)):
            if x is not None and y is not None and len(x) != len(y):
                raise ValueError(f"{self.name}: {len(x)} images but {len(y)} labels")
        if (self.val_x is None) != (self.val_y is None):
            raise ValueError(f"{self.name}: val_x and val_y must both be given or both be None")

    def train_transform(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training inputs (with the pipeline's random augmentation) from uint8 images, on ``x``'s device."""
        return PIPELINES[self.pipeline][0](x, generator=generator)

    def eval_transform(self, x: Tensor) -> Tensor:
        """Deterministic evaluation inputs from uint8 images, on ``x``'s device."""
        return PIPELINES[self.pipeline][1](x)

    def to(self, device: torch.device | str) -> Task:
        """A copy with every tensor on ``device`` (e.g. to transform batches on the GPU)."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **moved)

    def _no_outliers(self) -> str:
        has_none = self.name in OUTLIER_SETS and OUTLIER_SETS[self.name] is None
        return "none (the task has no outlier set)" if has_none else "not loaded"

    def summary(self) -> str:
        """One line per split with its size."""
        parts = [f"{self.name} ({self.preprocessing}): {self.num_classes} classes, input {self.input_shape}",
                 f"train {len(self.train_x)}", f"test {len(self.test_x)}",
                 f"outliers {len(self.outlier_x) if self.outlier_x is not None else self._no_outliers()}"]
        if self.val_x is not None:
            parts.append(f"validation {len(self.val_x)}")
        return ", ".join(parts)


def available_tasks() -> tuple[str, ...]:
    """The names :func:`load_task` accepts."""
    return TASKS


def load_task(name: str, data_dir: str | Path | None = None, *, download: bool = False, validation: bool = True,
              preprocessing: str = "paper", progress: bool = True, outliers: bool = True) -> Task:
    """Load one of the paper's tasks.

    Args:
        name: ``"mnist"``: train 55,000 + validation 5,000 (TF ``read_data_sets``: the first 5,000 training
            images are the validation split, docs/protocol.md §5.2) or all 60,000 with ``validation=False``;
            test 10,000; outliers = notMNIST test (10,000). ``"cifar5"``: CIFAR-10 classes 0-4: train 25,000,
            test 5,000; outliers = the 5,000 test images of classes 5-9 (docs/protocol.md §5.3, 6.3); no
            validation split (``validation`` is ignored). ``"cifar10"``: all 10 classes: train 50,000, test
            10,000, no outliers (:data:`OUTLIER_SETS`: ``outlier_x`` is None whatever ``outliers`` says), no
            validation split.
        data_dir: see :func:`bbh.data.resolve_data_dir` (argument, ``$BBH_DATA_DIR``, ``~/.cache/bbh/data``).
        download: fetch missing files (verified) from the official sources. Default: do not; missing files
            raise :class:`~bbh.data.MissingDataError` (one line naming them and the folder; nothing is created).
        validation: MNIST only: hold out TF's 5,000 validation images.
        preprocessing: ``"paper"`` (CIFAR: the authors' 24x24 pipeline) or ``"standard"`` (CIFAR: 32x32 with
            the usual pad-crop-flip and per-channel normalisation). MNIST has one preprocessing (pixels in
            [0, 1]), used for both.
        progress: show download progress bars.
        outliers: load the out-of-distribution set. Without it (training), MNIST needs no notMNIST files and
            ``outlier_x`` / ``outlier_y`` are ``None``. A task without one (``cifar10``) ignores it.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {preprocessing!r}; valid: {', '.join(PREPROCESSING)}")
    if name == "mnist":
        root = ensure_datasets(["mnist", "notmnist"] if outliers else ["mnist"], data_dir, download=download,
                               progress=progress)
        x, y = load_mnist(root / "mnist", "train")
        val_x = val_y = None
        if validation:
            x, y, val_x, val_y = split_validation(x, y, MNIST_VALIDATION)
        test_x, test_y = load_mnist(root / "mnist", "test")
        out_x, out_y = load_notmnist(root / "notmnist") if outliers else (None, None)
        return Task("mnist", 10, (1, 28, 28), x, y, test_x, test_y, out_x, out_y, val_x, val_y,
                    preprocessing=preprocessing, pipeline="mnist")
    root = ensure_datasets(["cifar10"], data_dir, download=download, progress=progress)
    folder = root / "cifar10" / BATCHES_DIR
    classes = CIFAR5_CLASSES if name == "cifar5" else CIFAR10_CLASSES
    train_x, train_y = select_classes(*load_cifar10(folder, "train"), classes)
    all_test_x, all_test_y = load_cifar10(folder, "test")
    test_x, test_y = select_classes(all_test_x, all_test_y, classes)
    out_x, out_y = (select_classes(all_test_x, all_test_y, CIFAR5_OUTLIER_CLASSES)
                    if outliers and name == "cifar5" else (None, None))
    size = 24 if preprocessing == "paper" else 32
    return Task(name, len(classes), (3, size, size), train_x, train_y, test_x, test_y, out_x, out_y,
                preprocessing=preprocessing, pipeline=f"cifar-{preprocessing}")


SPLITS = ("train", "test")


def fetch(names: str | tuple[str, ...] | list[str], data_dir: str | Path | None = None, *,
          progress: bool = True) -> Path:
    """Download the files of ``names`` (``"mnist"``, ``"notmnist"``, ``"cifar5"``, ``"cifar10"``; a task includes
    its outlier set) that are not in the data folder yet, checksum-verified; return the data folder.

    What ``--download`` does before a command runs. Raises :class:`~bbh.data.MissingDataError` (what could not be
    fetched, and why) or :class:`~bbh.data.ChecksumError`.
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise ValueError(f"unknown data set {', '.join(map(repr, unknown))}; valid: {', '.join(DATASETS)}")
    return ensure_datasets([d for n in names for d in DATASETS[n]], data_dir, download=True, progress=progress)


def load(name: str, data_dir: str | Path | None = None, *, split: str = "test", download: bool = False,
         preprocessing: str = "paper", progress: bool = True) -> TensorDataset:
    """One data set's ``split`` as a ``TensorDataset(x, y)``: float32 inputs ready for the network and int64
    labels, for :func:`bbh.evaluate` (``evaluate(method, ds.tensors)``) or a ``DataLoader``.

    ``x`` is the task's deterministic evaluation preprocessing of the images (:meth:`Task.eval_transform`, no
    augmentation): MNIST / notMNIST ``[N, 1, 28, 28]`` in [0, 1]; CIFAR ``[N, 3, 24, 24]`` (``"paper"``: central
    crop, per-image standardisation, what ``bbh train``'s CIFAR runs see) or ``[N, 3, 32, 32]`` (``"standard"``:
    per-channel normalisation). For training with the paper's augmentation and MNIST's validation split, use
    :func:`load_task`.

    Args:
        name: ``"mnist"`` (train 60,000 / test 10,000), ``"notmnist"`` (letters A-J as labels 0..9; test
            10,000 only, MNIST's outlier set), ``"cifar10"`` (train 50,000 / test 10,000), ``"cifar5"`` (CIFAR-10
            classes 0-4: train 25,000 / test 5,000; its outlier set is ``cifar10``'s test images with labels >= 5).
        data_dir: the folder that holds ``mnist/``, ``notmnist/``, ``cifar10/`` (default: ``$BBH_DATA_DIR``,
            else ``~/.cache/bbh/data``; :func:`~bbh.data.resolve_data_dir`).
        split: ``"test"`` (the default: what evaluation needs) or ``"train"``.
        download: fetch missing files from the official sources, verified (:func:`fetch`). Default: do not.
        preprocessing: CIFAR only, ``"paper"`` or ``"standard"``.
        progress: download progress bars.

    Raises:
        MissingDataError: files that are not in the folder (one line naming them and the folder; nothing is
            created or downloaded without ``download=True``).
        DataFormatError: a file that is there but unreadable.
        ValueError: an unknown name, split or preprocessing, or notMNIST's ``"train"``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {preprocessing!r}; valid: {', '.join(PREPROCESSING)}")
    if name == "notmnist" and split != "test":
        raise ValueError("notMNIST has only a test split (it is MNIST's outlier set): split='test'")
    folder = name if name in ("mnist", "notmnist") else "cifar10"
    root = ensure_datasets([folder], data_dir, download=download, progress=progress)
    if folder == "mnist":
        x, y = load_mnist(root / "mnist", split)
    elif folder == "notmnist":
        x, y = load_notmnist(root / "notmnist")
    else:
        x, y = load_cifar10(root / "cifar10" / BATCHES_DIR, split)
        if name == "cifar5":
            x, y = select_classes(x, y, CIFAR5_CLASSES)
    pipeline = "mnist" if folder != "cifar10" else f"cifar-{preprocessing}"
    return TensorDataset(PIPELINES[pipeline][1](x), y)


__all__ = ["DATASETS", "OUTLIER_SETS", "Task", "available_tasks", "fetch", "load", "load_task"]
