"""The posterior predictive of a classifier and its uncertainty decomposition.

For S posterior draws with class probabilities p_s(y | x) (paper-protocol 6.1):

    p(y | x)  = (1/S) Σ_s p_s(y | x)                                   the predictive (mean)
    H[p]      = -Σ_k p_k log p_k                                       total uncertainty
    E_s H[p_s] = (1/S) Σ_s H[p_s]                                     expected entropy (aleatoric)
    I         = H[p] - E_s H[p_s]                                      mutual information (epistemic)

(Houlsby et al. 2011; Depeweg et al. 2018). MAP gives one draw, ensembles one per member. Every entropy here
is :func:`bbh.evaluation.metrics.entropy` with ``clamp=0`` (exact, 0 log 0 = 0); the paper's entropy AUC uses
the same function with the authors' clamp (see :mod:`bbh.evaluation.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .metrics import entropy


class Sampler(Protocol):
    """What prediction needs of a method (:class:`bbh.posteriors.protocol.Method` has it): outputs under S
    posterior draws. Stated structurally so that this module of pure tensor functions sits below the methods."""

    def sample_outputs(self, x: Tensor, n_samples: int, *, chunk_size: int | None = None) -> Tensor: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


@dataclass
class Predictive:
    """Class probabilities of S posterior draws for B inputs: ``sample_probs [S, B, K]``."""

    sample_probs: Tensor

    def __post_init__(self) -> None:
        if self.sample_probs.dim() != 3:
            raise ValueError(f"sample_probs must be [S, B, K], got {tuple(self.sample_probs.shape)}")

    @property
    def mean(self) -> Tensor:
        """The predictive p(y | x) = (1/S) Σ_s p_s(y | x), ``[B, K]``."""
        return self.sample_probs.mean(0)

    @property
    def entropy(self) -> Tensor:
        """Total predictive entropy H[p] = -Σ_k p_k log p_k, ``[B]`` (nats, exact)."""
        return entropy(self.mean, clamp=0.0)

    @property
    def expected_entropy(self) -> Tensor:
        """Aleatoric part E_s H[p_s] = (1/S) Σ_s H[p_s], ``[B]``."""
        return entropy(self.sample_probs, clamp=0.0).mean(0)

    @property
    def mutual_information(self) -> Tensor:
        """Epistemic part I = H[p] - E_s H[p_s] >= 0, ``[B]`` (rounding below 0 clamped)."""
        return (self.entropy - self.expected_entropy).clamp_min(0.0)

    def summary(self) -> dict[str, Tensor]:
        """``mean``, ``entropy``, ``expected_entropy``, ``mutual_information``: what streaming keeps."""
        mean = self.mean
        total = entropy(mean, clamp=0.0)
        expected = entropy(self.sample_probs, clamp=0.0).mean(0)
        return {"mean": mean, "entropy": total, "expected_entropy": expected,
                "mutual_information": (total - expected).clamp_min(0.0)}


def predict(method: Sampler, x: Tensor, n_samples: int = 100, chunk_size: int | None = None) -> Predictive:
    """``Predictive`` of ``method`` on one batch ``x``: the softmax of ``method.sample_outputs(x, n_samples,
    chunk_size=chunk_size)`` in float32 or wider.

    The method chunks its own draws (``chunk_size`` at a time bounds memory; its vectorisation runs within a
    chunk). Methods with a fixed set of draws (``method.fixed_draws``: MAP's one, an ensemble's M members)
    give those whatever ``n_samples`` is, so ``sample_probs.shape[0]`` is the number of draws actually used.
    No autograd graph is built; the method's train/eval mode is left as it is.
    """
    if isinstance(n_samples, bool) or int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    n = int(n_samples)
    with torch.no_grad():
        outputs = method.sample_outputs(x, n, chunk_size=chunk_size)
        return Predictive(outputs.float().softmax(-1) if outputs.dtype in (torch.float16, torch.bfloat16)
                          else outputs.softmax(-1))


def iter_batches(x: Tensor, batch_size: int) -> Iterator[Tensor]:
    """``x`` in consecutive slices of ``batch_size`` along the first dimension."""
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i in range(0, x.shape[0], int(batch_size)):
        yield x[i:i + int(batch_size)]


def predict_batches(method: Sampler, batches: Iterable[Any], n_samples: int = 100, chunk_size: int | None = None,
                    transform: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Stream :func:`predict` over batches of inputs (tensors, or ``(x, y, ...)`` tuples as a DataLoader yields)
    and keep only the per-input summaries on the CPU (never S x N x K): ``mean [N, K]``, ``entropy``,
    ``expected_entropy``, ``mutual_information`` ``[N]`` (:meth:`Predictive.summary`).

    Args:
        method: any bbh method (put it in eval mode first, e.g. ``with method.evaluating():``).
        batches: an iterable of input batches; each is moved to the device of ``method``'s parameters.
        n_samples, chunk_size: as :func:`predict`.
        transform: applied to every input batch before the method sees it (e.g. a task's ``eval_transform``).
    """
    device = _device_of(method)
    out: dict[str, list[Tensor]] = {}
    for xb in batches:
        if isinstance(xb, (tuple, list)):
            xb = xb[0]
        if transform is not None:
            xb = transform(xb)
        if device is not None:
            xb = xb.to(device)
        for k, v in predict(method, xb, n_samples, chunk_size).summary().items():
            out.setdefault(k, []).append(v.cpu())
    if not out:
        raise ValueError("no batches to predict on")
    return {k: torch.cat(v) for k, v in out.items()}


def _device_of(method: Sampler) -> torch.device | None:
    """The device of the first parameter (or buffer) of ``method``; None when it has neither."""
    for t in (*method.parameters(), *method.buffers()):
        return t.device
    return None


__all__ = ["Predictive", "iter_batches", "predict", "predict_batches"]
