"""The posterior predictive of a classifier and its uncertainty decomposition.

For S posterior draws with class probabilities p_s(y | x) (paper-protocol 6.1):

    p(y | x)  = (1/S) Σ_s p_s(y | x)                                   the predictive (mean)
    H[p]      = -Σ_k p_k log p_k                                       total uncertainty
    E_s H[p_s] = (1/S) Σ_s H[p_s]                                     expected entropy (aleatoric)
    I         = H[p] - E_s H[p_s]                                      mutual information (epistemic)

(Houlsby et al. 2011; Depeweg et al. 2018). MAP gives one draw, ensembles one per member.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


def _entropy(p: Tensor) -> Tensor:
    """-Σ_k p_k log p_k over the last dimension, with 0 log 0 = 0."""
    return -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(-1)


@dataclass
class Predictive:
    """Class probabilities of S posterior draws for B inputs: ``sample_probs [S, B, K]``."""

    sample_probs: Tensor

    def __post_init__(self) -> None:
        if self.sample_probs.dim() != 3:
            raise ValueError(f"sample_probs must be [S, B, K], got {tuple(self.sample_probs.shape)}")

    @property
    def mean(self) -> Tensor:
        """The predictive p(y | x), ``[B, K]``."""
        return self.sample_probs.mean(0)

    @property
    def entropy(self) -> Tensor:
        """Total predictive entropy H[p], ``[B]`` (nats)."""
        return _entropy(self.mean)

    @property
    def expected_entropy(self) -> Tensor:
        """Aleatoric part E_s H[p_s], ``[B]``."""
        return _entropy(self.sample_probs).mean(0)

    @property
    def mutual_information(self) -> Tensor:
        """Epistemic part H[p] - E_s H[p_s] >= 0, ``[B]`` (rounding below 0 clamped)."""
        return (self.entropy - self.expected_entropy).clamp_min(0.0)

    def summary(self) -> dict[str, Tensor]:
        """``mean``, ``entropy``, ``expected_entropy``, ``mutual_information``: what streaming keeps."""
        return {"mean": self.mean, "entropy": self.entropy, "expected_entropy": self.expected_entropy,
                "mutual_information": self.mutual_information}


def predict(method, x: Tensor, n_samples: int = 100, chunk_size: int | None = None) -> Predictive:
    """``Predictive`` of ``method`` on one batch: ``sample_outputs`` softmaxed, ``chunk_size`` samples at a
    time (bounds memory; the method's own vectorisation runs within a chunk). Methods with a fixed set of
    draws (``fixed_samples``: MAP's one, an ensemble's M members) give those whatever ``n_samples`` is."""
    n = int(n_samples)
    if n < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    with torch.no_grad():
        if getattr(method, "fixed_samples", False):
            return Predictive(method.sample_outputs(x, n).float().softmax(-1))
        chunk = n if chunk_size is None else max(1, int(chunk_size))
        parts = [method.sample_outputs(x, min(chunk, n - i)).float().softmax(-1) for i in range(0, n, chunk)]
    return Predictive(torch.cat(parts))


def iter_batches(x: Tensor, batch_size: int):
    """``x`` in consecutive slices of ``batch_size`` along the first dimension."""
    for i in range(0, x.shape[0], batch_size):
        yield x[i:i + batch_size]


def predict_batches(method, batches: Iterable[Tensor], n_samples: int = 100, chunk_size: int | None = None,
                    transform: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Stream ``predict`` over batches of inputs (tensors, or ``(x, y, ...)`` tuples as a DataLoader yields)
    and keep only the per-input summaries (never S x N x K): ``mean [N, K]``, ``entropy``,
    ``expected_entropy``, ``mutual_information`` ``[N]``."""
    out: dict[str, list[Tensor]] = {}
    for xb in batches:
        if isinstance(xb, (tuple, list)):
            xb = xb[0]
        if transform is not None:
            xb = transform(xb)
        for k, v in predict(method, xb, n_samples, chunk_size).summary().items():
            out.setdefault(k, []).append(v.cpu())
    if not out:
        raise ValueError("no batches to predict on")
    return {k: torch.cat(v) for k, v in out.items()}


__all__ = ["Predictive", "iter_batches", "predict", "predict_batches"]
