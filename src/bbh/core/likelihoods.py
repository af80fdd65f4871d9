"""Observation models p(y | f(x; w)): they turn network outputs into per-example log-likelihoods.

Classification: :class:`Categorical`. Regression: :class:`Gaussian` (fixed σ), :class:`LearnedGaussian`
(``likelihood="gaussian"``, σ learned) and :class:`Heteroscedastic` (``likelihood="heteroscedastic"``, the network
outputs mean and log-variance). Besides ``log_prob``, a likelihood may have ``predictive(outputs [S, B, ...])``,
which :meth:`bbh.Method.predict` uses to build its predictive (softmax probabilities, or a regression
predictive), and ``is_regression``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .options import LikelihoodName, parse_option

if TYPE_CHECKING:
    from .predictive import Predictive, RegressionPredictive


class Likelihood(Protocol):
    """Maps outputs [..., B, *out] and targets [B, ...] to log p(y | output), shape [..., B].

    Optional: ``check_targets(y, batch)`` (run before the forward pass; with a keyword ``outputs`` it is also given
    an empty ``meta`` tensor of one pass's outputs ``[B, *out]``, to check the targets against),
    ``predictive(outputs [S, B, *out])`` (what :meth:`bbh.Method.predict` returns; without it the softmax of the
    outputs), ``is_regression``.
    """

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor: ...


def _check_classes(y: Tensor, classes: int) -> None:
    """Raise ``ValueError`` unless every label of ``y`` is in [0, classes) (one device sync)."""
    if y.numel():
        low, high = torch.stack([y.min(), y.max()]).tolist()  # one device sync for both
        if low < 0 or high >= classes:
            found = " and ".join(str(v) for v, bad in ((low, low < 0), (high, high >= classes)) if bad)
            raise ValueError(f"labels must be class indices in [0, {classes}); found {found}")


class Categorical:
    """p(y | logits) = softmax(logits)_y; outputs [..., B, K], integer targets [B] in [0, K)."""

    is_regression: bool = False

    def check_targets(self, y: Tensor, batch: int | None = None, outputs: Tensor | None = None) -> None:
        """Raise ``ValueError`` unless ``y`` is a 1-d integer tensor of class labels (of ``batch`` entries) and,
        when ``outputs`` (logits ``[B, K]``, or an empty ``meta`` tensor of their shape) is given, in [0, K).

        Needs no computed logits, so a method runs it before its forward pass (the shape of ``outputs`` comes
        from a dry run on the ``meta`` device); :meth:`log_prob` checks the range again itself.
        """
        if not isinstance(y, Tensor):
            raise TypeError(f"categorical likelihood expects class labels as a torch.Tensor, got {type(y).__name__}")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise ValueError(f"categorical likelihood expects integer class labels, got dtype {y.dtype}"
                             + (" (convert with y.long())" if y.dtype.is_floating_point else ""))
        if y.dim() != 1 or (batch is not None and y.shape[0] != batch):
            expected = "B" if batch is None else str(batch)
            raise ValueError(f"categorical likelihood expects class labels of shape [{expected}], got {tuple(y.shape)}")
        if outputs is not None and outputs.dim() >= 2:
            _check_classes(y, outputs.shape[-1])

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        """log softmax(outputs)_y, ``[..., B]``.

        Raises:
            ValueError: outputs that are not logits ``[..., B, K]``, labels that are not integers of shape
                ``[B]``, or labels outside [0, K) (the message gives the extreme values found).
        """
        if outputs.dim() < 2:
            raise ValueError(f"categorical likelihood expects logits [..., B, K], got shape {tuple(outputs.shape)}")
        self.check_targets(y, outputs.shape[-2])
        _check_classes(y, outputs.shape[-1])
        y = y.long()  # uint8 / int16 labels (as read from MNIST files) are fine
        logp = F.log_softmax(outputs, dim=-1)
        index = y.expand(*outputs.shape[:-1]).unsqueeze(-1)
        return logp.gather(-1, index).squeeze(-1)

    def predictive(self, outputs: Tensor) -> Predictive:
        """The classification predictive of S draws of logits ``[S, B, K]``: their softmax."""
        from .predictive import Predictive

        return Predictive(outputs.softmax(-1))

    def __repr__(self) -> str:
        return "Categorical()"


def _check_float_targets(name: str, y: Tensor, dtype: torch.dtype | None = None) -> None:
    """Raise ``ValueError`` unless ``y`` is floating point. Integer (or bool) targets are refused, not converted:
    given to a regression likelihood they are more often class labels passed by mistake than values, and the
    fix, stated in the message, is one call."""
    if not y.dtype.is_floating_point:
        conversion = "y.double()" if dtype == torch.float64 else "y.float()"
        raise ValueError(f"{name} likelihood expects floating-point targets, got dtype {y.dtype}: convert them with "
                         f"{conversion} (integer targets are not converted silently: class labels are meant for "
                         f"likelihood='categorical')")


def _check_gaussian_targets(name: str, outputs_shape: torch.Size, y: Tensor) -> None:
    """Raise ``ValueError`` unless ``y`` is floating point and matches the trailing dimensions ``outputs_shape``
    (the per-draw mean)."""
    _check_float_targets(name, y)
    target_shape = outputs_shape[-y.dim():] if y.dim() else torch.Size()
    if y.shape != target_shape or y.dim() > len(outputs_shape):
        raise ValueError(
            f"{name} likelihood: targets of shape {tuple(y.shape)} do not match outputs "
            f"{tuple(outputs_shape)} (expected targets {tuple(target_shape)})"
        )


def _normal_log_prob(mean: Tensor, log_sigma: Tensor, y: Tensor) -> Tensor:
    """Σ_d log N(y_d; mean_d, σ_d²) with log σ given, keeping the leading sample dims and the batch dim."""
    lp = -0.5 * ((y - mean) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
    lp = lp.expand(mean.shape) if lp.shape != mean.shape else lp
    batch_dims = mean.dim() - y.dim() + 1  # keep leading sample dims and the batch dim
    return lp.reshape(*lp.shape[:batch_dims], -1).sum(-1)


class _Regression:
    """Shared by the Gaussian likelihoods: per-draw means and variances, and the regression predictive.

    :meth:`mean_and_variance` maps outputs ``[..., B, *out]`` to the mean μ and variance σ² of
    N(y; μ, σ²) (each of the targets' shape, with the same leading dims); :meth:`predictive` builds a
    :class:`bbh.core.predictive.RegressionPredictive` from S draws of outputs.
    """

    is_regression: bool = True

    def check_targets(self, y: Tensor, batch: int | None = None, outputs: Tensor | None = None) -> None:
        """Raise ``ValueError`` unless ``y`` holds floating-point targets of ``batch`` examples that fit ``outputs``
        (one pass's outputs ``[B, *out]``, or an empty ``meta`` tensor of their shape), before any forward pass."""
        if not isinstance(y, Tensor):
            raise TypeError(f"{self._name} likelihood expects targets as a torch.Tensor, got {type(y).__name__}")
        _check_float_targets(self._name, y, None if outputs is None else outputs.dtype)
        if batch is not None and (y.dim() == 0 or y.shape[0] != batch):
            raise ValueError(f"{self._name} likelihood expects targets of {batch} examples [B, ...], got shape "
                             f"{tuple(y.shape)}")
        if outputs is not None:
            self._check_shape(outputs.shape, y)

    _name = "Gaussian"

    def _check_shape(self, outputs_shape: torch.Size, y: Tensor) -> None:
        _check_gaussian_targets(self._name, outputs_shape, y)

    def mean_and_variance(self, outputs: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def predictive(self, outputs: Tensor) -> RegressionPredictive:
        """The regression predictive of S draws of outputs ``[S, B, *out]``."""
        from .predictive import RegressionPredictive

        mean, var = self.mean_and_variance(outputs)
        return RegressionPredictive(mean, var.expand_as(mean))


class Gaussian(_Regression):
    """p(y | f) = N(y; f, sigma^2) with a fixed noise scale (the toy regression: sigma = 9).

    log p = -(y - f)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2, summed over output dimensions.
    """

    def __init__(self, sigma: float) -> None:
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"Gaussian likelihood sigma must be finite and > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        _check_gaussian_targets("Gaussian", outputs.shape, y)
        lp = -0.5 * ((y - outputs) / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)
        batch_dims = outputs.dim() - y.dim() + 1  # keep leading sample dims and the batch dim
        return lp.reshape(*lp.shape[:batch_dims], -1).sum(-1)

    def mean_and_variance(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        """μ = f, σ² = sigma² (a constant)."""
        return outputs, torch.full_like(outputs, self.sigma ** 2)

    def __repr__(self) -> str:
        return f"Gaussian(sigma={self.sigma:g})"


class LearnedGaussian(_Regression, nn.Module):
    """Homoscedastic p(y | f) = N(y; f, σ²) with one noise scale σ = exp(log_sigma) learned with the network.

        log p = -(y - f)² / (2 σ²) - log σ - log(2π) / 2,   summed over output dimensions.

    ``likelihood="gaussian"`` builds one with σ = 1 at the start. It is an ``nn.Module``: a method holding it
    registers ``log_sigma`` as its own parameter (``method.likelihood.log_sigma``), so the optimizer trains it
    (:meth:`bbh.Method.trainable_parameters`) and ``state_dict()`` saves it. It is a point estimate (no prior,
    no posterior) in every method. Limitation: a deep ensemble shares this one σ between its members (the
    members' losses are summed, so it learns their pooled noise level); for a noise level of each member's
    own use :class:`Heteroscedastic`, whose variance is an output of every member's network.

    Args:
        init_sigma: σ at initialisation (finite, > 0).
    """

    def __init__(self, init_sigma: float = 1.0) -> None:
        super().__init__()
        if not (isinstance(init_sigma, (int, float)) and math.isfinite(init_sigma) and init_sigma > 0):
            raise ValueError(f"LearnedGaussian init_sigma must be finite and > 0, got {init_sigma!r}")
        self.log_sigma = nn.Parameter(torch.tensor(math.log(init_sigma)))

    @property
    def sigma(self) -> float:
        """The current noise scale σ = exp(log_sigma)."""
        return float(self.log_sigma.detach().exp())

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        _check_gaussian_targets("Gaussian", outputs.shape, y)
        return _normal_log_prob(outputs, self.log_sigma.to(outputs.dtype), y)

    def mean_and_variance(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        """μ = f, σ² = exp(2 log_sigma) (the same for every example)."""
        var = torch.exp(2 * self.log_sigma.detach().to(outputs.dtype))
        return outputs, var.expand_as(outputs)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:.4g}"


class Heteroscedastic(_Regression):
    """Heteroscedastic p(y | f) = N(y; μ(x), σ²(x)): the network outputs 2·D values per example.

    For outputs ``[..., B, 2D]`` and targets ``[B, D]``: μ = f[..., :D], s = f[..., D:] (the log-variance), and

        σ² = exp(s) + min_variance,
        log p = Σ_d [-(y_d - μ_d)² / (2 σ_d²) - log(σ_d²) / 2 - log(2π) / 2].

    The floor ``min_variance`` keeps the density bounded where the network drives s → -∞. Each draw of the
    posterior (each ensemble member) predicts its own noise level. Has no parameters of its own.

    Args:
        min_variance: the variance floor (>= 0; default 1e-6).
    """

    def __init__(self, min_variance: float = 1e-6) -> None:
        if not (math.isfinite(min_variance) and min_variance >= 0):
            raise ValueError(f"Heteroscedastic min_variance must be finite and >= 0, got {min_variance!r}")
        self.min_variance = float(min_variance)

    def mean_and_variance(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        """μ = f[..., :D] and σ² = exp(f[..., D:]) + min_variance, each ``[..., B, D]``."""
        if outputs.dim() < 2 or outputs.shape[-1] % 2:
            raise ValueError(f"heteroscedastic likelihood expects outputs [..., B, 2D] (mean and log-variance), "
                             f"got shape {tuple(outputs.shape)}")
        mean, log_var = outputs.chunk(2, dim=-1)
        return mean, log_var.exp() + self.min_variance

    _name = "heteroscedastic"

    def _check_shape(self, outputs_shape: torch.Size, y: Tensor) -> None:
        if len(outputs_shape) < 2 or outputs_shape[-1] % 2:
            raise ValueError(f"heteroscedastic likelihood expects outputs [..., B, 2D] (mean and log-variance), "
                             f"got shape {tuple(outputs_shape)}")
        expected = (outputs_shape[-2], outputs_shape[-1] // 2)
        if y.dim() != 2 or tuple(y.shape) != expected:
            raise ValueError(f"heteroscedastic likelihood: targets of shape {tuple(y.shape)} do not match outputs "
                             f"{tuple(outputs_shape)} (expected targets {expected}: D = half the outputs)")

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        _check_float_targets(self._name, y)
        self._check_shape(outputs.shape, y)
        mean, var = self.mean_and_variance(outputs)
        lp = -0.5 * ((y - mean) ** 2 / var + var.log() + math.log(2 * math.pi))
        return lp.sum(-1)

    def __repr__(self) -> str:
        return f"Heteroscedastic(min_variance={self.min_variance:g})"


def as_likelihood(value: Likelihood | str) -> Likelihood:
    """A likelihood object from a name or itself.

    ``"categorical"``: :class:`Categorical`; ``"gaussian"``: :class:`LearnedGaussian` (σ learned, starting at 1);
    ``"heteroscedastic"``: :class:`Heteroscedastic` (the network outputs mean and log-variance).
    """
    if isinstance(value, str):
        try:
            name = parse_option(LikelihoodName, value, "likelihood")
        except ValueError as error:
            raise ValueError(f"{error}, or a likelihood object such as bbh.likelihoods.Gaussian(sigma)") from None
        return {LikelihoodName.CATEGORICAL: Categorical, LikelihoodName.GAUSSIAN: LearnedGaussian,
                LikelihoodName.HETEROSCEDASTIC: Heteroscedastic}[name]()
    if not callable(getattr(value, "log_prob", None)):
        raise TypeError(f"likelihood must have log_prob(outputs, y), got {type(value).__name__}")
    return value
