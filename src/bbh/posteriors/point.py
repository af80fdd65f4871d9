"""Maximum a posteriori (MAP) training: a point estimate with the Gaussian prior as an L2 penalty."""

from __future__ import annotations

from torch import Tensor, nn

from ..elbo import LossTerms, elbo
from ..likelihoods import Likelihood
from .protocol import WEIGHT_LAYERS, Method, ParamFilter, register, select_parameters


def _kernels(model: nn.Module) -> list[str]:
    """Weights (not biases) of Linear and Conv layers: what the authors' L2 term covers."""
    return [f"{m}.weight" if m else "weight" for m, mod in model.named_modules() if isinstance(mod, WEIGHT_LAYERS)]


@register("map")
class MAP(Method):
    """MAP estimate: loss = mean NLL + (1/N) Σ_k w_k^2 / (2 s^2) (paper-protocol 4.1).

    The penalty is -log N(w; 0, s^2) up to a constant, over the kernels only (the authors' ``l2_regularizer``;
    biases and normalisation parameters are not penalised), scaled by 1/N like the KL of the variational
    methods, and reported in the ``kl`` slot of :class:`~bbh.elbo.LossTerms`.

    Args:
        model: the network.
        likelihood: ``"categorical"`` or a likelihood object.
        prior_scale: s; None for plain maximum likelihood (the toy's MAP, paper-protocol 1.4).
        params: parameters that get the penalty (default: Linear/Conv kernels).
    """

    fixed_samples = True

    def __init__(self, model: nn.Module, likelihood: Likelihood | str = "categorical",
                 prior_scale: float | None = 1.0, params: ParamFilter = None) -> None:
        super().__init__(model, likelihood, prior=1.0 if prior_scale is None else prior_scale)
        self.prior_scale = None if prior_scale is None else float(prior_scale)
        names = _kernels(model) if params is None else select_parameters(model, params)
        self.penalised = names

    def penalty(self) -> Tensor:
        """Σ_k w_k^2 / (2 s^2) over the penalised parameters (0 without a prior)."""
        named = dict(self.model.named_parameters())
        ref = next(iter(named.values()))
        if self.prior_scale is None:
            return ref.new_zeros(())
        return sum((named[n] ** 2).sum() for n in self.penalised) / (2 * self.prior_scale**2)

    def loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        nll = self.mean_nll(self.model(x), y)
        return elbo(nll, self.penalty(), num_data=num_data, kl_weight=kl_weight)

    def sample_outputs(self, x: Tensor, n_samples: int = 1) -> Tensor:
        """The single deterministic output, ``[1, B, ...]`` whatever ``n_samples`` is."""
        return self.model(x).unsqueeze(0)


__all__ = ["MAP"]
