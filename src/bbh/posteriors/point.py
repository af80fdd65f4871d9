"""Maximum a posteriori (MAP) training: a point estimate with the Gaussian prior as an L2 penalty."""

from __future__ import annotations

from torch import Tensor, nn

from ..core.elbo import LossTerms, elbo
from ..core.likelihoods import Likelihood
from ..core.options import check_float
from .factory import register
from .protocol import WEIGHT_LAYERS, Method, ParamFilter, select_parameters


def kernel_names(model: nn.Module) -> list[str]:
    """Weights (not biases) of Linear and Conv layers: what the authors' L2 term covers."""
    return [f"{m}.weight" if m else "weight" for m, mod in model.named_modules() if isinstance(mod, WEIGHT_LAYERS)]


class GaussianPenalty:
    """-log N(w; 0, s^2) up to a constant over named parameters: Σ_k w_k^2 / (2 s^2) (docs/protocol.md §4.1).

    The authors' ``l2_regularizer`` for MAP and MC-Dropout; by default over the kernels only (biases and
    normalisation parameters are not penalised). ``scale=None`` gives no penalty (plain maximum likelihood).
    Holds no parameters or state of its own (nothing enters a ``state_dict``).
    """

    def __init__(self, model: nn.Module, scale: float | None = 1.0, params: ParamFilter = None) -> None:
        self.scale = None if scale is None else check_float("prior_scale", scale, 0.0, open_low=True)
        self.names = kernel_names(model) if params is None else select_parameters(model, params)

    def __call__(self, model: nn.Module) -> Tensor:
        named = dict(model.named_parameters())
        ref = next(iter(named.values()))
        if self.scale is None:
            return ref.new_zeros(())
        return sum((named[n] ** 2).sum() for n in self.names) / (2 * self.scale**2)


@register("map")
class MAP(Method):
    """MAP estimate: loss = mean NLL + (1/N) Σ_k w_k^2 / (2 s^2) (docs/protocol.md §4.1).

    The penalty (:class:`GaussianPenalty`) is -log N(w; 0, s^2) up to a constant, over the kernels only,
    scaled by 1/N like the KL of the variational methods, and reported in the ``kl`` slot of
    :class:`~bbh.elbo.LossTerms`. One deterministic draw: :attr:`fixed_draws` is 1.

    Args:
        model: the network.
        likelihood: ``"categorical"`` or a likelihood object.
        prior_scale: s; None for plain maximum likelihood (the toy's MAP, docs/protocol.md §1.4).
        params: parameters that get the penalty (default: Linear/Conv kernels).
    """

    fixed_draws = 1

    def __init__(self, model: nn.Module, likelihood: Likelihood | str = "categorical",
                 prior_scale: float | None = 1.0, params: ParamFilter = None) -> None:
        if prior_scale is not None:
            prior_scale = check_float("prior_scale", prior_scale, 0.0, open_low=True)
        super().__init__(model, likelihood, prior=1.0 if prior_scale is None else prior_scale)
        self.l2 = GaussianPenalty(model, prior_scale, params)

    @property
    def prior_scale(self) -> float | None:
        return self.l2.scale

    def penalty(self) -> Tensor:
        """Σ_k w_k^2 / (2 s^2) over the penalised parameters (0 without a prior)."""
        return self.l2(self.model)

    def _loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        outputs = self.model(x)
        return elbo(self.mean_nll(outputs, y), self.penalty(), num_data=num_data, kl_weight=kl_weight,
                    outputs=outputs)

    def _sample_outputs(self, x: Tensor, n_samples: int = 1, *, chunk_size: int | None = None) -> Tensor:
        """The single deterministic output, ``[1, B, ...]`` whatever ``n_samples`` is."""
        return self.model(x).unsqueeze(0)

    def _per_copy_outputs(self, xs: Tensor) -> Tensor:
        return self.model(xs[0]).unsqueeze(0)


__all__ = ["MAP", "GaussianPenalty", "kernel_names"]
