"""Minibatches: any data a user passes as ``(x, y)`` batches (:func:`as_batches`), one shuffling order per ensemble
member (deep ensembles, docs/protocol.md §4.3), and the training-set size N that a DataLoader trains on
(:func:`training_set_size`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

_ASK = "pass num_data=N (the number of training examples) to fit()"


def as_batches(data: Any, batch_size: int, *, name: str = "data",
               labels: bool = False) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``(x, y)`` minibatches of whatever a user may pass as a data set: the one reader of evaluation-side data.

    * a tensor ``x`` -> batches of ``batch_size`` rows with ``y`` None (refused when ``labels`` is needed);
    * an ``(x, y)`` pair of tensors with as many rows -> batches of both;
    * any other iterable of batches (a ``DataLoader``) -> its batches, each a tensor or an ``(x, y, ...)``
      tuple; they are fetched inside a CPU RNG fork, so loading (shuffling, augmentation) never shifts the
      caller's random stream.

    Raises:
        TypeError: ``data`` (or one of its batches) is none of these, or has no labels where ``labels`` is True.
        ValueError: a pair whose x and y have different numbers of rows.
    """
    need = " (labels are needed)" if labels else ""
    if isinstance(data, Tensor) and labels:
        raise TypeError(f"{name} must be an (x, y) pair of tensors or an iterable of (x, y) batches (a DataLoader), "
                        f"got a tensor{need}")
    if isinstance(data, Tensor) or is_pair(data):
        x, y = (data, None) if isinstance(data, Tensor) else data
        if y is not None and (x.dim() < 1 or y.dim() < 1 or x.shape[0] != y.shape[0]):
            raise ValueError(f"{name} as an (x, y) pair needs the same number of examples in x and y, got shapes "
                             f"{list(x.shape)} and {list(y.shape)}")
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size], None if y is None else y[i:i + batch_size]
        return
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(f"{name} must be a tensor, an (x, y) pair of tensors or an iterable of batches (a "
                        f"DataLoader), got {type(data).__name__}{need}")
    with torch.random.fork_rng(devices=[]):
        it = iter(data)
    while True:
        with torch.random.fork_rng(devices=[]):
            try:
                batch = next(it)
            except StopIteration:
                return
        if isinstance(batch, Tensor):
            if labels:
                raise TypeError(f"every batch of {name} must be an (x, y, ...) tuple of tensors{need}, got a tensor")
            yield batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            y = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
            if y is None and labels:
                raise TypeError(f"every batch of {name} must be an (x, y, ...) tuple of tensors{need}")
            yield batch[0], y
        else:
            raise TypeError(f"the batches of {name} must be tensors or (x, y, ...) tuples, got "
                            f"{type(batch).__name__}{need}")


def is_pair(data: Any) -> bool:
    """Whether ``data`` is an ``(x, y)`` pair of tensors (as opposed to an iterable of batches)."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)


def known_length(obj: Any) -> int | None:
    """``len(obj)``, or None where it has none (an IterableDataset's DataLoader raises TypeError in len())."""
    try:
        return len(obj)
    except TypeError:
        return None


def training_set_size(data: Any) -> int | None:
    """N, the number of training examples for the KL / N of the ELBO: the examples an epoch of ``data`` draws
    from. None for an iterable with neither a ``dataset`` nor a sampler (the caller asks for ``num_data``).

    For a DataLoader, from the sampler that picks its examples:

    * ``SequentialSampler``, ``RandomSampler`` (also with ``num_samples`` or replacement: an epoch of k draws
      from the whole dataset still trains on all of it) and ``DistributedSampler`` (each rank its share, the
      ranks together the whole dataset): ``len(dataset)``;
    * ``SubsetRandomSampler`` and any other sampler with a length: ``len(sampler)``, the examples it draws
      per epoch (1,000 indices of a 60,000-example dataset: N = 1,000);
    * ``WeightedRandomSampler``: the examples of positive weight (those that can be drawn).

    Another iterable with a ``dataset`` (:class:`MemberBatches`): ``len(dataset)``.

    Raises:
        ValueError: N cannot be known (an ``IterableDataset`` without ``len``, a sampler without one, a batch
            sampler of its own with no ``sampler``, ``batch_size=None``); the message asks for ``num_data``.
    """
    dataset = getattr(data, "dataset", None)
    if not isinstance(data, DataLoader):
        return known_length(dataset) if dataset is not None else None
    if isinstance(dataset, IterableDataset):
        n = known_length(dataset)
        if n is None:
            raise ValueError(f"a DataLoader over an IterableDataset ({type(dataset).__name__}) has no length: {_ASK}")
        return n
    batches = data.batch_sampler
    if batches is None:
        raise ValueError(f"a DataLoader with batch_size=None yields the dataset's items as batches, so their "
                         f"number is not the number of examples: {_ASK}")
    sampler = batches.sampler if isinstance(batches, BatchSampler) else getattr(batches, "sampler", None)
    if sampler is None:
        raise ValueError(f"the DataLoader's batch sampler ({type(batches).__name__}) says nothing of the examples "
                         f"it draws: {_ASK}")
    if isinstance(sampler, (SequentialSampler, RandomSampler, DistributedSampler)):
        return len(dataset)
    if isinstance(sampler, WeightedRandomSampler):
        return int((torch.as_tensor(sampler.weights) > 0).sum())
    n = known_length(sampler)
    if n is None:
        raise ValueError(f"the DataLoader's sampler ({type(sampler).__name__}) has no length: {_ASK}")
    return n


class MemberBatches:
    """Iterates over ``(x [M, B, ...], y [M, B, ...])``: member k's minibatches follow its own permutation.

    One pass (an epoch) gives every member every example once, in its own random order, as the authors'
    CIFAR code did; ``len()`` is the number of steps per epoch (the last, incomplete batch is dropped so
    that all members' batches stack). Pass it to :meth:`bbh.Trainer.fit` with a
    ``DeepEnsemble(member_batches=True)``; ``dataset`` gives the Trainer N.

    Args:
        x, y: the training inputs and targets (same first dimension N).
        members: M.
        batch_size: B (<= N).
        seed: seed of the permutations (epoch e, member k use a generator seeded by (seed, e)).
    """

    def __init__(self, x: Tensor, y: Tensor, members: int, batch_size: int, seed: int = 0) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y have different numbers of examples: {x.shape[0]} vs {y.shape[0]}")
        if members < 1 or not 1 <= batch_size <= x.shape[0]:
            raise ValueError(f"need members >= 1 and 1 <= batch_size <= {x.shape[0]}, got {members}, {batch_size}")
        self.x, self.y, self.members, self.batch_size, self.seed = x, y, int(members), int(batch_size), int(seed)
        self.dataset = x  # len(dataset) = N, as for a DataLoader
        self._epoch = 0

    def __len__(self) -> int:
        return self.x.shape[0] // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self._epoch)
        self._epoch += 1
        n = self.x.shape[0]
        orders = torch.stack([torch.randperm(n, generator=g) for _ in range(self.members)])  # [M, N]
        for i in range(len(self)):
            idx = orders[:, i * self.batch_size:(i + 1) * self.batch_size].to(self.x.device)
            yield self.x[idx], self.y[idx]


__all__ = ["MemberBatches", "known_length", "training_set_size"]
