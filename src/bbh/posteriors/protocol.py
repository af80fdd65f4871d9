"""The method protocol shared by every posterior in bbh, parameter selection, and the factory.

A *method* wraps a plain ``nn.Module`` (the main network) and owns a distribution over a chosen subset of
its parameters. Every method answers the same three questions:

* ``loss(x, y, num_data=N, kl_weight=a)`` -> :class:`~bbh.elbo.LossTerms` (NLL and KL kept apart),
* ``sample_outputs(x, n_samples)`` -> ``Tensor[S, B, ...]``, network outputs under S posterior draws,
* ``state_dict()`` / ``load_state_dict()`` — everything needed to rebuild the posterior.

``post_step()`` is called by the trainer after every optimizer step; methods with auxiliary models
(a trainable KL estimator) take their own update there, so the trainer never needs to know about them.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

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
    """Base class of every bbh method (BbH, MAP and the baselines).

    Subclasses set ``name`` and implement :meth:`loss` and :meth:`sample_outputs`. The main network is
    registered as ``self.model``; parameters a method replaces by samples have ``requires_grad = False``
    so that ``trainable_parameters()`` lists exactly what the optimizer updates.
    """

    name: ClassVar[str] = "method"
    fixed_samples: ClassVar[bool] = False
    """True where ``sample_outputs`` returns a fixed set of draws (MAP: 1, ensembles: M members)."""
    default_lr: ClassVar[dict[str, float]] = {}
    """Learning rate per optimizer name used by the Trainer when none is given (falls back to
    :data:`bbh.optim.DEFAULT_LR`)."""

    def __init__(self, model: nn.Module, likelihood: Likelihood | str = "categorical",
                 prior: Prior | float = 1.0) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.likelihood = as_likelihood(likelihood)
        self.prior = as_prior(prior)

    def loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        raise NotImplementedError

    def sample_outputs(self, x: Tensor, n_samples: int) -> Tensor:
        raise NotImplementedError

    def predict(self, x: Tensor, n_samples: int = 100, chunk_size: int | None = None):
        """The posterior predictive on ``x``: a :class:`bbh.predictive.Predictive` (per-sample probabilities
        ``[S, B, K]``, mean, entropy, expected entropy, mutual information)."""
        from ..evaluation.predictive import predict

        return predict(self, x, n_samples, chunk_size)

    def post_step(self) -> dict[str, float]:
        """Hook run after each optimizer step (auxiliary updates); returns values to log."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the main optimizer updates (auxiliary models excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def mean_nll(self, outputs: Tensor, y: Tensor) -> Tensor:
        """Mean over the minibatch of -log p(y | outputs); keeps ``outputs`` (detached) as
        ``_last_outputs`` so that a training loop can report the training accuracy."""
        self._last_outputs = outputs.detach()
        return -self.likelihood.log_prob(outputs, y).mean()


_REGISTRY: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator adding a method to the :func:`create` factory under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(_REGISTRY)


def create(method: str, model: nn.Module, **options: Any) -> Method:
    """Build a method by name: ``bbh.create("bbh", model, layout="layerwise", noise="independent")``.

    Raises:
        ValueError: unknown method name or unknown option (the message lists the valid ones).
    """
    if method not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(map(repr, available_methods()))}")
    cls = _REGISTRY[method]
    sig = inspect.signature(cls.__init__)
    valid = [p for p in sig.parameters if p not in ("self", "model")]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for method {method!r}; "
                         f"valid options: {', '.join(valid)}")
    return cls(model, **options)


def check_finite(name: str, value: Tensor) -> None:
    """Raise ``FloatingPointError`` naming ``name`` when ``value`` holds NaN or inf."""
    if not bool(torch.isfinite(value).all()):
        raise FloatingPointError(f"{name} is not finite ({value.detach().flatten()[:4].tolist()}...)")
