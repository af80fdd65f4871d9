"""What the methods that sample whole weight sets share (BbH, BbB): prediction, attacks and the KL estimator's
own update, all from one ``sample(n) -> {name: Tensor[n, *shape]}``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..functional import chunked_sample_outputs, forward_samples_per_input
from ..kl import KLEstimator
from .protocol import Method


class WeightSampler(Method):
    """A :class:`Method` whose posterior is a distribution over weight sets it can draw.

    Subclasses implement :meth:`sample` and may hold a ``kl_estimator`` (None for an analytic KL) and keep the
    step's detached samples in ``_last_samples`` for a trainable estimator; everything else follows:
    vectorised predictions (``vmap`` over draws), per-copy outputs for attacks, weight samples for the
    posterior figures, the estimator's ``update`` after each step, and its parameters kept out of the main
    optimizer.
    """

    # (no class-level defaults for ``kl_estimator``: a class attribute would shadow the submodule nn.Module
    # registers under that name)

    def _estimator(self) -> KLEstimator | None:
        return getattr(self, "kl_estimator", None)

    def sample(self, n: int) -> dict[str, Tensor]:
        """n posterior weight samples ``{name: Tensor[n, *shape]}``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement sample()")

    def _sample_outputs(self, x: Tensor, n_samples: int, *, chunk_size: int | None = None) -> Tensor:
        """Outputs under ``n_samples`` weight draws, ``[S, B, ...]`` (vectorised over draws)."""
        return chunked_sample_outputs(self.model, self.sample, x, n_samples, chunk_size)

    def weight_samples(self, n: int) -> dict[str, Tensor]:
        """n draws of the weight posterior ``{name: Tensor[n, *shape]}`` (:meth:`sample`)."""
        return self.sample(n)

    def _per_copy_outputs(self, xs: Tensor) -> Tensor:
        """S weight draws (without autograd: attacks need input gradients only), draw s on ``xs[s]``."""
        with torch.no_grad():
            samples = self.sample(xs.shape[0])
        return forward_samples_per_input(self.model, samples, xs)

    def post_step(self) -> dict[str, float]:
        """A trainable KL estimator's own update on the step's detached samples."""
        estimator, samples = self._estimator(), getattr(self, "_last_samples", None)
        if estimator is not None and estimator.trainable and samples is not None:
            return estimator.update(samples, self.prior)
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything that requires grad except the KL estimator's own parameters."""
        estimator = self._estimator()
        aux = {id(p) for p in estimator.parameters()} if estimator is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in aux]


__all__ = ["WeightSampler"]
