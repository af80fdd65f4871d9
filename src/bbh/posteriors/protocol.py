"""The method protocol shared by every posterior in bbh (:class:`Method`) and parameter selection.

A *method* wraps a plain ``nn.Module`` (the main network) and owns a distribution over a chosen subset of
its parameters (or, for MC-Dropout and MNF, stochastic layers). See :class:`Method` for the interface and
the capabilities a method declares; :mod:`bbh.posteriors.factory` builds methods by name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..elbo import LossTerms
from ..likelihoods import Likelihood, as_likelihood
from ..priors import Prior, as_prior

ParamFilter = Callable[[str, nn.Parameter], bool] | Iterable[str] | None

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
"""Layers whose weight and bias are random variables by default. Normalisation layers are not among
them: their affine parameters stay point estimates (as in the authors' ResNets)."""


def select_parameters(model: nn.Module, params: ParamFilter = None) -> list[str]:
    """Names of the parameters of ``model`` that a posterior covers.

    Args:
        model: the main network.
        params: None (every weight and bias of Linear and Conv layers), a predicate
            ``f(name, parameter) -> bool``, or names / glob patterns (``"fc*.weight"``).

    Raises:
        ValueError: a name that does not exist, a pattern that matches nothing, or an empty selection.
    """
    named = dict(model.named_parameters())
    if params is None:
        chosen = []
        for mod_name, mod in model.named_modules():
            if isinstance(mod, WEIGHT_LAYERS):
                for p_name, p in mod.named_parameters(recurse=False):
                    if p is not None:
                        chosen.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    elif callable(params):
        chosen = [n for n, p in named.items() if params(n, p)]
    else:
        if isinstance(params, str):
            params = [params]
        chosen = []
        for pattern in params:
            hits = [n for n in named if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ValueError(
                    f"parameter {pattern!r} does not exist in {type(model).__name__}; "
                    f"its parameters are: {', '.join(named)}"
                )
            chosen.extend(h for h in hits if h not in chosen)
    if not chosen:
        raise ValueError(f"no parameters of {type(model).__name__} selected for the posterior "
                         f"(parameters: {', '.join(named) or 'none'})")
    order = list(named)
    return sorted(chosen, key=order.index)


class Method(nn.Module):
    """The one door: the base class of every bbh method (BbH, MAP and the baselines).

    Every consumer — the Trainer, evaluation, attacks, probes, posterior plots, reports — talks to a method
    only through this interface and the capabilities it declares; none names a concrete method class.

    What a subclass implements:

    * :meth:`loss` ``(x, y, *, num_data, kl_weight) -> LossTerms`` — the per-datum negative ELBO with its
      terms apart and the per-example ``outputs`` the NLL came from (:func:`bbh.elbo.elbo`).
    * :meth:`sample_outputs` ``(x, n_samples, *, chunk_size=None) -> Tensor[S, B, ...]`` — network outputs
      under S posterior draws, at most ``chunk_size`` draws evaluated at once.

    What it may override (capabilities, with safe defaults):

    * :attr:`fixed_draws` — ``None`` where ``sample_outputs`` draws as many samples as asked, else the fixed
      number it always returns (MAP: 1, a deep ensemble: M members).
    * :meth:`weight_samples` ``(n) -> dict[name, Tensor[n, *shape]] | None`` — samples of the weight
      posterior, or None for methods without one (MAP, MC-Dropout).
    * :meth:`per_copy_outputs` ``(xs [S, B, ...]) -> [S, B, ...]`` — S fresh draws where draw s sees only
      ``xs[s]`` (per-sample input gradients for the authors' FGSM); the default loops over draws.
    * :meth:`post_step` — an auxiliary update after each optimizer step (a trainable KL estimator).
    * :meth:`trainable_parameters` — what the main optimizer updates.

    The main network is ``self.model``; parameters a method replaces by samples have ``requires_grad =
    False``. ``state_dict()`` holds tensors only and round-trips through ``torch.load(weights_only=True)``.
    """

    name: ClassVar[str] = "method"
    fixed_draws: int | None = None
    """None: ``sample_outputs`` returns as many draws as asked; else the fixed number it always returns."""
    default_lr: ClassVar[dict[str, float]] = {}
    """Learning rate per optimizer name used by the Trainer when none is given (falls back to
    :data:`bbh.training.optim.DEFAULT_LR`)."""

    def __init__(self, model: nn.Module, likelihood: Likelihood | str = "categorical",
                 prior: Prior | float = 1.0) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.likelihood = as_likelihood(likelihood)
        self.prior = as_prior(prior)

    # ---- what every method implements -----------------------------------------------------------------
    def loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        """Per-datum negative ELBO on one minibatch: ``mean NLL + kl_weight * KL / num_data``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement loss()")

    def sample_outputs(self, x: Tensor, n_samples: int, *, chunk_size: int | None = None) -> Tensor:
        """Outputs under ``n_samples`` posterior draws, ``[S, B, ...]`` (S = :attr:`fixed_draws` if set)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement sample_outputs()")

    # ---- capabilities with defaults ---------------------------------------------------------------------
    def weight_samples(self, n: int) -> dict[str, Tensor] | None:
        """``{name: Tensor[n, *shape]}`` samples of the weight posterior; None: the method has none."""
        return None

    def per_copy_outputs(self, xs: Tensor) -> Tensor:
        """``xs [S, B, ...] -> outputs [S, B, ...]``: S fresh posterior draws, draw s evaluated on ``xs[s]``
        only (so that one backward pass yields each draw's own input gradient). Default: one
        ``sample_outputs(xs[s], 1)`` call per draw; methods override it with a vectorised path."""
        return torch.stack([self.sample_outputs(xs[s], 1)[0] for s in range(xs.shape[0])])

    def draws(self, n_samples: int) -> int:
        """How many draws ``sample_outputs(x, n_samples)`` returns: :attr:`fixed_draws` or ``n_samples``."""
        return int(n_samples) if self.fixed_draws is None else int(self.fixed_draws)

    def post_step(self) -> dict[str, float]:
        """Hook run after each optimizer step (auxiliary updates); returns values to log."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the main optimizer updates (auxiliary models excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ---- prediction ---------------------------------------------------------------------------------------
    @contextmanager
    def evaluating(self) -> Iterator[Method]:
        """Evaluation mode for the duration of the block, then every submodule's own mode restored.

        Deterministic layers (BatchNorm's running statistics, a model's own ``nn.Dropout`` outside
        MC-Dropout) switch to eval mode; the method's own stochasticity (weight samples, MC-Dropout masks,
        MNF noise) stays on, because it does not depend on the mode.
        """
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            yield self
        finally:
            for m, mode in modes:
                m.training = mode

    def predict(self, x: Tensor, n_samples: int = 100, *, chunk_size: int | None = None):
        """The posterior predictive on ``x``: a :class:`bbh.evaluation.predictive.Predictive` (per-sample
        probabilities ``[S, B, K]``, mean, entropy, expected entropy, mutual information). Runs in
        :meth:`evaluating` mode without gradients; the caller's modes are restored."""
        from ..evaluation.predictive import predict

        with self.evaluating():
            return predict(self, x, n_samples, chunk_size=chunk_size)

    # ---- helpers for subclasses ---------------------------------------------------------------------------
    def mean_nll(self, outputs: Tensor, y: Tensor) -> Tensor:
        """Mean over the minibatch of -log p(y | outputs)."""
        return -self.likelihood.log_prob(outputs, y).mean()


def check_finite(name: str, value: Tensor) -> None:
    """Raise ``FloatingPointError`` naming ``name`` when ``value`` holds NaN or inf."""
    if not bool(torch.isfinite(value).all()):
        raise FloatingPointError(f"{name} is not finite ({value.detach().flatten()[:4].tolist()}...)")
