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
    """p(y | logits) = softmax(logits)_y; outputs [..., B, K], integer targets [B] in [0, K)."""

    def check_targets(self, y: Tensor, batch: int | None = None) -> None:
        """Raise ``ValueError`` unless ``y`` is a 1-d integer tensor of class labels (of ``batch`` entries).

        Needs no logits, so a method runs it before its forward pass; the range [0, K) is checked by
        :meth:`log_prob`, where K is known.
        """
        if not isinstance(y, Tensor):
            raise TypeError(f"categorical likelihood expects class labels as a torch.Tensor, got {type(y).__name__}")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise ValueError(f"categorical likelihood expects integer class labels, got dtype {y.dtype}"
                             + (" (convert with y.long())" if y.dtype.is_floating_point else ""))
        if y.dim() != 1 or (batch is not None and y.shape[0] != batch):
            expected = "B" if batch is None else str(batch)
            raise ValueError(f"categorical likelihood expects class labels of shape [{expected}], got {tuple(y.shape)}")

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        """log softmax(outputs)_y, ``[..., B]``.

        Raises:
            ValueError: outputs that are not logits ``[..., B, K]``, labels that are not integers of shape
                ``[B]``, or labels outside [0, K) (the message gives the extreme values found).
        """
        if outputs.dim() < 2:
            raise ValueError(f"categorical likelihood expects logits [..., B, K], got shape {tuple(outputs.shape)}")
        self.check_targets(y, outputs.shape[-2])
        classes = outputs.shape[-1]
        if y.numel():
            low, high = torch.stack([y.min(), y.max()]).tolist()  # one device sync for both
            if low < 0 or high >= classes:
                found = " and ".join(str(v) for v, bad in ((low, low < 0), (high, high >= classes)) if bad)
                raise ValueError(f"labels must be class indices in [0, {classes}); found {found}")
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
