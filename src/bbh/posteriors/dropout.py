"""MC-Dropout (Gal & Ghahramani 2016): dropout kept on at test time as approximate Bayesian inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.elbo import LossTerms, elbo
from ..core.functional import chunk_sizes
from ..core.likelihoods import Likelihood
from ..core.options import check_float
from .factory import register
from .point import GaussianPenalty
from .protocol import Method, ParamFilter

DROPOUT_LAYERS: dict[type[nn.Module], Callable[..., Tensor]] = {
    nn.Dropout: F.dropout, nn.Dropout1d: F.dropout1d, nn.Dropout2d: F.dropout2d, nn.Dropout3d: F.dropout3d,
    nn.AlphaDropout: F.alpha_dropout, nn.FeatureAlphaDropout: F.feature_alpha_dropout,
}
"""PyTorch's dropout layers and the functional form MC-Dropout applies for each at prediction time."""

DEFAULT_RATE = 0.5
"""The authors' dropout rate (paper Sec. 3: pi = 0.5) for declared sites when no ``rate`` is given."""


def _dropout_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and type(m) in DROPOUT_LAYERS]


def _resolve_sites(model: nn.Module, sites: Sequence[str] | str | None) -> tuple[list[str], bool]:
    """(site names, whether they are the model's own dropout layers)."""
    if isinstance(sites, str):
        names = [sites]
    elif sites is not None:
        names = list(sites)
    else:
        names = list(getattr(model, "dropout_sites", ()) or ())
    if not names and sites is None:
        layers = _dropout_layers(model)
        if layers:
            return layers, True
    if not names:
        raise ValueError(f"{type(model).__name__} has no dropout layers (nn.Dropout, nn.Dropout2d, ...) and "
                         f"declares no dropout sites: add dropout layers to the model, pass sites=[module names] "
                         f"(dropout is applied to each named module's output) or give the model a "
                         f"`dropout_sites` attribute")
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"dropout site(s) {', '.join(map(repr, missing))} are not modules of "
                         f"{type(model).__name__}; its modules are: {', '.join(n for n in modules if n)}")
    return names, False


@register("mc-dropout")
class MCDropout(Method):
    """MC-Dropout: dropout always on (training and prediction), plus MAP's Gaussian penalty.

    loss = mean NLL(f(x; w, mask)) + (1/N) Σ_kernels w^2 / (2 s^2)     (docs/protocol.md §4.2)

    Where dropout acts, in this order of precedence:

    * ``sites=[module names]``, or a model attribute ``dropout_sites``: inverted dropout (Bernoulli(1 - rate)
      / (1 - rate) masks, per element and per call) on each named module's output, reached by forward
      hooks, so any model works without editing its ``forward``. LeNet5 declares ``("drop1", "drop2",
      "drop3")``: identity modules after the ReLUs of c1 and c2 and after fc1 (the authors' placement).
    * otherwise the model's own dropout layers (``nn.Dropout``, ``nn.Dropout2d``, ...): they keep dropping
      at prediction time, in eval mode too (a hook applies the layer's functional form with
      ``training=True`` when the layer is in eval mode), each at its own ``p`` unless ``rate`` is given.

    The hooks live on ``model`` itself (:meth:`remove_hooks` takes them off). Prediction in eval mode
    (:meth:`~bbh.posteriors.protocol.Method.evaluating`) freezes BatchNorm while the masks stay random.

    Args:
        model: the network.
        likelihood: ``"categorical"`` or a likelihood object.
        rate: probability of dropping a unit; default 0.5 (the authors') at declared sites and each dropout
            layer's own ``p`` (given, it overrides the layers' ``p``).
        sites: names of the modules whose outputs get dropout (default: ``model.dropout_sites``, else the
            model's dropout layers).
        prior_scale: s of the L2 penalty (as MAP); None for none.
        params: parameters that get the penalty (default: Linear/Conv kernels).
    """

    def __init__(self, model: nn.Module, likelihood: Likelihood | str = "categorical", rate: float | None = None,
                 sites: Sequence[str] | str | None = None, prior_scale: float | None = 1.0,
                 params: ParamFilter = None) -> None:
        if prior_scale is not None:
            prior_scale = check_float("prior_scale", prior_scale, 0.0, open_low=True)
        super().__init__(model, likelihood, prior=1.0 if prior_scale is None else prior_scale)
        if rate is not None:
            rate = check_float("dropout rate", rate, 0.0, 1.0, open_low=True, open_high=True)
        self.l2 = GaussianPenalty(model, prior_scale, params)
        self.sites, self.own_layers = _resolve_sites(model, sites)
        modules = dict(model.named_modules())
        if self.own_layers:
            if rate is not None:
                for n in self.sites:
                    modules[n].p = float(rate)
            self.rates = {n: float(modules[n].p) for n in self.sites}
            hook = self._keep_layer_on
        else:
            self.rates = {n: DEFAULT_RATE if rate is None else float(rate) for n in self.sites}
            hook = self._drop_output
        values = set(self.rates.values())
        self.rate = values.pop() if len(values) == 1 else None
        """The common dropout rate of every site (None when the model's layers differ)."""
        self._site_rate = {id(modules[n]): r for n, r in self.rates.items()}
        self._hooks = [modules[n].register_forward_hook(hook) for n in self.sites]

    @property
    def prior_scale(self) -> float | None:
        return self.l2.scale

    def penalty(self) -> Tensor:
        """Σ_k w_k^2 / (2 s^2) over the penalised parameters (0 without a prior)."""
        return self.l2(self.model)

    def _drop_output(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        return F.dropout(output, self._site_rate[id(module)], training=True)

    def _keep_layer_on(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        if module.training:  # the layer has dropped already
            return output
        return DROPOUT_LAYERS[type(module)](output, module.p, training=True)

    def remove_hooks(self) -> None:
        """Take the dropout hooks off the model (it then behaves as the plain network)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        outputs = self.model(x)
        return elbo(self.mean_nll(outputs, y), self.penalty(), num_data=num_data, kl_weight=kl_weight,
                    outputs=outputs)

    def _sample_outputs(self, x: Tensor, n_samples: int, *, chunk_size: int | None = None) -> Tensor:
        """Outputs of ``n_samples`` stochastic passes, ``[S, B, ...]``: the batch repeated ``chunk_size``
        times (default all S) and run as one forward, each copy with its own masks."""
        outs = [self._per_copy_outputs(x.unsqueeze(0).expand(k, *x.shape)) for k in chunk_sizes(n_samples, chunk_size)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

    def _per_copy_outputs(self, xs: Tensor) -> Tensor:
        """Copies ``xs [S, B, ...]`` stacked into one batch of S·B examples (masks are drawn per example)."""
        out = self.model(xs.reshape(xs.shape[0] * xs.shape[1], *xs.shape[2:]))
        return out.view(xs.shape[0], xs.shape[1], *out.shape[1:])

    def extra_repr(self) -> str:
        return f"rates={self.rates}, own_layers={self.own_layers}"


__all__ = ["DROPOUT_LAYERS", "MCDropout"]
