"""The posterior predictive of a classifier and its uncertainty decomposition.

For S posterior draws with class probabilities p_s(y | x) (docs/protocol.md §6.1):

    p(y | x)  = (1/S) Σ_s p_s(y | x)                                   the predictive (mean)
    H[p]      = -Σ_k p_k log p_k                                       total uncertainty
    E_s H[p_s] = (1/S) Σ_s H[p_s]                                     expected entropy (aleatoric)
    I         = H[p] - E_s H[p_s]                                      mutual information (epistemic)

(Houlsby et al. 2011; Depeweg et al. 2018). For a Gaussian likelihood with per-draw means μ_s and variances σ_s²
(:class:`RegressionPredictive`):

    E[y | x]   = (1/S) Σ_s μ_s                                           the predictive mean
    aleatoric  = (1/S) Σ_s σ_s²,   epistemic = (1/S) Σ_s (μ_s - E[y | x])²,   Var[y | x] = aleatoric + epistemic
    log p(y | x) = log (1/S) Σ_s N(y; μ_s, σ_s²)                          the mixture density

 MAP gives one draw, ensembles one per member. Every entropy here
is :func:`bbh.core.metrics.entropy` with ``clamp=0`` (exact, 0 log 0 = 0); the paper's entropy AUC uses
the same function with the authors' clamp (see :mod:`bbh.core.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .metrics import entropy, gaussian_mixture_log_density


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


@dataclass
class RegressionPredictive:
    """The Gaussian predictive of S posterior draws for B inputs: per-draw means ``sample_means [S, B, *D]``
    and variances ``sample_variances [S, B, *D]`` (the likelihood's noise σ_s², > 0).

    The predictive is the equal-weight mixture (1/S) Σ_s N(y; μ_s, σ_s²); its variance splits into the
    aleatoric part E_s[σ_s²] and the epistemic part Var_s[μ_s] (law of total variance). Build one with
    ``likelihood.predictive(outputs)`` (:class:`bbh.likelihoods.LearnedGaussian` and friends) or
    :meth:`bbh.Method.predict`.
    """

    sample_means: Tensor
    sample_variances: Tensor

    def __post_init__(self) -> None:
        if self.sample_means.dim() < 2 or self.sample_means.shape != self.sample_variances.shape:
            raise ValueError(f"sample_means and sample_variances must both be [S, B, *D], got "
                             f"{tuple(self.sample_means.shape)} and {tuple(self.sample_variances.shape)}")

    @property
    def mean(self) -> Tensor:
        """The predictive mean E[y | x] = (1/S) Σ_s μ_s, ``[B, *D]``."""
        return self.sample_means.mean(0)

    @property
    def aleatoric_var(self) -> Tensor:
        """The noise part E_s[σ_s²] = (1/S) Σ_s σ_s², ``[B, *D]``."""
        return self.sample_variances.mean(0)

    @property
    def epistemic_var(self) -> Tensor:
        """The posterior part Var_s[μ_s] = (1/S) Σ_s (μ_s - E[y | x])², ``[B, *D]`` (0 for one draw)."""
        return self.sample_means.var(0, correction=0)

    @property
    def variance(self) -> Tensor:
        """The predictive variance Var[y | x] = aleatoric_var + epistemic_var, ``[B, *D]``."""
        return self.aleatoric_var + self.epistemic_var

    @property
    def std(self) -> Tensor:
        """The predictive standard deviation sqrt(Var[y | x]), ``[B, *D]``."""
        return self.variance.sqrt()

    def log_density(self, y: Tensor) -> Tensor:
        """log p(y | x) = log (1/S) Σ_s N(y; μ_s, σ_s²) per example, summed over D, ``[B]``
        (:func:`bbh.core.metrics.gaussian_mixture_log_density`; the UCI test log-likelihood)."""
        return gaussian_mixture_log_density(self.sample_means, self.sample_variances, y)

    def summary(self) -> dict[str, Tensor]:
        """``mean``, ``variance``, ``aleatoric_var``, ``epistemic_var``: what streaming keeps."""
        return {"mean": self.mean, "variance": self.variance, "aleatoric_var": self.aleatoric_var,
                "epistemic_var": self.epistemic_var}


def predict(method: Sampler, x: Tensor, n_samples: int = 100,
            chunk_size: int | None = None) -> Predictive | RegressionPredictive:
    """The predictive of ``method`` on one batch ``x``, from ``method.sample_outputs(x, n_samples,
    chunk_size=chunk_size)`` in float32 or wider: ``method.likelihood.predictive(outputs)`` where the likelihood
    has one (a :class:`Predictive` of softmax probabilities for ``Categorical``, a :class:`RegressionPredictive`
    for the Gaussian likelihoods), else a :class:`Predictive` of the outputs' softmax.

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
        if outputs.dtype in (torch.float16, torch.bfloat16):
            outputs = outputs.float()
        make = getattr(getattr(method, "likelihood", None), "predictive", None)
        return make(outputs) if callable(make) else Predictive(outputs.softmax(-1))


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
    ``expected_entropy``, ``mutual_information`` ``[N]`` (:meth:`Predictive.summary`); for a regression
    likelihood ``mean``, ``variance``, ``aleatoric_var``, ``epistemic_var`` ``[N, *D]``
    (:meth:`RegressionPredictive.summary`).

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


__all__ = ["Predictive", "RegressionPredictive", "iter_batches", "predict", "predict_batches"]
