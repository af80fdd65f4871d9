"""What the methods that sample whole weight sets share (BbH, BbB): prediction, attacks and the KL estimator's
own update, all from one ``sample(n) -> {name: Tensor[n, *shape]}``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..core.functional import chunked_sample_outputs, forward_samples_per_input
from ..core.priors import Prior
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
        cache = getattr(self, "_draw_cache", None)
        if cache is None:
            return chunked_sample_outputs(self.model, self.sample, x, n_samples, chunk_size)
        draws = self._cached_draws("outputs", n_samples)
        served = [0]

        def serve(k: int) -> dict[str, Tensor]:  # the cached draws, chunk after chunk
            start = served[0]
            served[0] += k
            return {name: t[start:start + k] for name, t in draws.items()}

        return chunked_sample_outputs(self.model, serve, x, n_samples, chunk_size)

    @contextmanager
    def reusing_draws(self, enabled: bool = True) -> Iterator[WeightSampler]:
        """See :meth:`Method.reusing_draws`: one set of S weight draws per purpose (predictive outputs,
        per-copy attack outputs) and S, drawn without autograd at first use, kept until the block ends
        (memory: S x the number of random weights, e.g. 172 MB for 100 LeNet-5 draws). Nested blocks share
        the outer block's draws; ``enabled=False`` suspends them for the inner block."""
        outer = getattr(self, "_draw_cache", None)
        if enabled and outer is not None:
            yield self
            return
        self._draw_cache: dict[tuple[str, int], dict[str, Tensor]] | None = {} if enabled else None
        try:
            yield self
        finally:
            self._draw_cache = outer

    def _cached_draws(self, purpose: str, n: int) -> dict[str, Tensor]:
        cache = self._draw_cache
        assert cache is not None
        if (purpose, n) not in cache:
            with torch.no_grad():
                cache[(purpose, n)] = {k: v.detach() for k, v in self.sample(n).items()}
        return cache[(purpose, n)]

    def estimator_prior(self) -> Prior:
        """The prior of the variables the KL estimator sees (the weight prior unless a subclass says otherwise)."""
        return self.prior

    def weight_samples(self, n: int) -> dict[str, Tensor]:
        """n draws of the weight posterior ``{name: Tensor[n, *shape]}`` (:meth:`sample`)."""
        return self.sample(n)

    def _per_copy_outputs(self, xs: Tensor) -> Tensor:
        """S weight draws (without autograd: attacks need input gradients only), draw s on ``xs[s]``."""
        if getattr(self, "_draw_cache", None) is not None:
            samples = self._cached_draws("per-copy", xs.shape[0])
        else:
            with torch.no_grad():
                samples = self.sample(xs.shape[0])
        return forward_samples_per_input(self.model, samples, xs)

    def post_step(self) -> dict[str, float]:
        """A trainable KL estimator's own update on the step's detached samples."""
        estimator, samples = self._estimator(), getattr(self, "_last_samples", None)
        if estimator is not None and estimator.trainable and samples is not None:
            return estimator.update(samples, self.estimator_prior())
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything that requires grad except the KL estimator's own parameters."""
        estimator = self._estimator()
        aux = {id(p) for p in estimator.parameters()} if estimator is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in aux]


__all__ = ["WeightSampler"]
