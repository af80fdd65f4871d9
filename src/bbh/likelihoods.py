"""Observation models p(y | f(x; w)): they turn network outputs into per-example log-likelihoods."""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class Likelihood(Protocol):
    """Maps outputs [..., B, *out] and targets [B, ...] to log p(y | output), shape [..., B]."""

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor: ...


class Categorical:
    """p(y | logits) = softmax(logits)_y; outputs [..., B, K], integer targets [B]."""

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        if outputs.dim() < 2:
            raise ValueError(f"categorical likelihood expects logits [..., B, K], got shape {tuple(outputs.shape)}")
        if y.dim() != 1 or y.shape[0] != outputs.shape[-2]:
            raise ValueError(
                f"categorical likelihood expects class labels of shape [{outputs.shape[-2]}], "
                f"got {tuple(y.shape)}"
            )
        if y.dtype.is_floating_point:
            raise ValueError(f"categorical likelihood expects integer class labels, got dtype {y.dtype}")
        if y.dtype == torch.bool:
            raise ValueError("categorical likelihood expects integer class labels, got dtype torch.bool")
        y = y.long()  # uint8 / int16 labels (as read from MNIST files) are fine
        logp = F.log_softmax(outputs, dim=-1)
        index = y.expand(*outputs.shape[:-1]).unsqueeze(-1)
        return logp.gather(-1, index).squeeze(-1)

    def __repr__(self) -> str:
        return "Categorical()"


class Gaussian:
    """p(y | f) = N(y; f, sigma^2) with a fixed noise scale (the toy regression: sigma = 9).

    log p = -(y - f)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2, summed over output dimensions.
    """

    def __init__(self, sigma: float) -> None:
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"Gaussian likelihood sigma must be finite and > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        target_shape = outputs.shape[-y.dim():] if y.dim() else torch.Size()
        if y.shape != target_shape:
            raise ValueError(
                f"Gaussian likelihood: targets of shape {tuple(y.shape)} do not match outputs "
                f"{tuple(outputs.shape)} (expected targets {tuple(target_shape)})"
            )
        lp = -0.5 * ((y - outputs) / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)
        batch_dims = outputs.dim() - y.dim() + 1  # keep leading sample dims and the batch dim
        return lp.reshape(*lp.shape[:batch_dims], -1).sum(-1)

    def __repr__(self) -> str:
        return f"Gaussian(sigma={self.sigma:g})"


def as_likelihood(value: Likelihood | str) -> Likelihood:
    """``"categorical"`` or a likelihood object."""
    if isinstance(value, str):
        if value == "categorical":
            return Categorical()
        raise ValueError(f"unknown likelihood {value!r}; expected 'categorical' or a likelihood object "
                         f"such as bbh.likelihoods.Gaussian(sigma)")
    if not callable(getattr(value, "log_prob", None)):
        raise TypeError(f"likelihood must have log_prob(outputs, y), got {type(value).__name__}")
    return value
