"""Minibatches with one shuffling order per ensemble member (deep ensembles, paper-protocol 4.3)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


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


__all__ = ["MemberBatches"]
