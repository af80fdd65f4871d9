"""MC-Dropout (Gal & Ghahramani 2016): dropout kept on at test time as approximate Bayesian inference."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..likelihoods import Likelihood
from .point import MAP
from .protocol import ParamFilter, register


def _resolve_sites(model: nn.Module, sites: Sequence[str] | None) -> list[str]:
    if isinstance(sites, str):
        names = [sites]
    elif sites is not None:
        names = list(sites)
    else:
        names = list(getattr(model, "dropout_sites", ()) or ())
    if not names:
        raise ValueError(f"{type(model).__name__} declares no dropout sites: pass sites=[module names] "
                         f"(dropout is applied to each named module's output) or give the model a "
                         f"`dropout_sites` attribute")
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"dropout site(s) {', '.join(map(repr, missing))} are not modules of "
                         f"{type(model).__name__}; its modules are: {', '.join(n for n in modules if n)}")
    return names


@register("mc-dropout")
class MCDropout(MAP):
    """MC-Dropout: inverted dropout at declared sites, always on (training and test), plus MAP's penalty.

    loss = mean NLL(f(x; w, mask)) + (1/N) Σ_kernels w^2 / (2 s^2)     (paper-protocol 4.2)

    Each site's output is multiplied by Bernoulli(1 - rate) / (1 - rate) masks drawn per element and per
    call. The sites are the *outputs of named submodules*, reached by forward hooks, so any model works
    without editing its ``forward``: LeNet5 declares ``dropout_sites = ("drop1", "drop2", "drop3")``
    (identity modules after the ReLUs of c1 and c2, before pooling, and after fc1's ReLU — the authors'
    placement); for other models pass ``sites=[...]``. The hooks are installed on ``model`` itself.

    Args:
        model: the network.
        likelihood: ``"categorical"`` or a likelihood object.
        rate: the probability of dropping a unit (authors: 0.5).
        sites: names of the modules whose outputs get dropout (default: ``model.dropout_sites``).
        prior_scale: s of the L2 penalty (as MAP); None for none.
        params: parameters that get the penalty (default: Linear/Conv kernels).
    """

    fixed_samples = False

    def __init__(self, model: nn.Module, likelihood: Likelihood | str = "categorical", rate: float = 0.5,
                 sites: Sequence[str] | None = None, prior_scale: float | None = 1.0,
                 params: ParamFilter = None) -> None:
        super().__init__(model, likelihood, prior_scale=prior_scale, params=params)
        if not 0.0 < float(rate) < 1.0:
            raise ValueError(f"dropout rate must be in (0, 1), got {rate}")
        self.rate = float(rate)
        self.sites = _resolve_sites(model, sites)
        modules = dict(model.named_modules())
        self._hooks = [modules[n].register_forward_hook(self._drop) for n in self.sites]

    def _drop(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        return F.dropout(output, self.rate, training=True)

    def remove_hooks(self) -> None:
        """Take the dropout hooks off the model (it then behaves as the plain network)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def sample_outputs(self, x: Tensor, n_samples: int, chunk_size: int | None = None) -> Tensor:
        """Outputs of ``n_samples`` stochastic passes, ``[S, B, ...]``.

        The batch is repeated ``chunk_size`` times (default: all S at once) and run as one forward, each
        copy with its own masks. Put the model in eval mode first if it has BatchNorm, as for any evaluation.
        """
        n = int(n_samples)
        if n < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        chunk = n if chunk_size is None else max(1, int(chunk_size))
        outs = []
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            out = self.model(x.repeat(k, *([1] * (x.dim() - 1))))
            outs.append(out.view(k, x.shape[0], *out.shape[1:]))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

    def extra_repr(self) -> str:
        return f"rate={self.rate}, sites={self.sites}"


__all__ = ["MCDropout"]
