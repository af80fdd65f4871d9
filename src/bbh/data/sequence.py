"""A synthetic sequence-classification task for transformers: which of two marker tokens comes first."""

from __future__ import annotations

import torch
from torch import Tensor


def token_order_task(n: int, length: int = 16, vocab: int = 20, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` sequences of random tokens 2..vocab-1 with the marker tokens 0 and 1 planted once each, one in each
    half of the sequence; the label is 1 when token 1 comes first. Solving it needs attention across positions
    (a bag of tokens is at chance, 50 %). Returns int64 tokens [n, length] and labels [n]."""
    if n < 1 or length < 2 or vocab < 3:
        raise ValueError(f"need n >= 1, length >= 2 and vocab >= 3, got {n}, {length}, {vocab}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, vocab, (n, length), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    rows = torch.arange(n)
    x[rows, torch.randint(0, length // 2, (n,), generator=g)] = y
    x[rows, torch.randint(length // 2, length, (n,), generator=g)] = 1 - y
    return x, y


__all__ = ["token_order_task"]
