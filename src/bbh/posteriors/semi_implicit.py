"""A Gaussian layer on an implicit sampler: the semi-implicit posterior q(w) = E_z[N(w; g(z), C)].

Any module with ``sample(n) -> {name: Tensor[n, *shape]}`` (a :class:`~bbh.posteriors.hypernet.HypernetPosterior`)
provides the implicit means μ = g(z); this module adds learned Gaussian noise ε ~ N(0, C) to each draw
(Yin & Zhou 2018). Its :class:`~bbh.kl.GaussianLayer` is what the semi-implicit KL (:class:`~bbh.kl.SemiImplicitKL`)
bounds the entropy with. Two forms of C per generated tensor (:data:`COVARIANCES`):

* ``diagonal`` — C = diag(σ²), σ = exp(ρ) learned per weight (D parameters);
* ``kronecker`` — the tensor seen as a matrix [o, i] (o its first dimension, 1 for a vector), W = M + A E Bᵀ with A
  [o, o] and B [i, i] lower-triangular (positive diagonals through exp): C = AAᵀ ⊗ BBᵀ, the matrix-variate Gaussian
  of Louizos & Welling (ICML 2016), which correlates the weights of a layer (o² + i² parameters, sampling
  O(n (o² i + o i²)) a step). A vector (a bias, one rank1 factor) gets a full Cholesky factor B [i, i].

C starts at (``init_scale`` x the RMS of the tensor's starting values)² times the identity (default 0.1), so the
Gaussian layer starts as a small perturbation of the hypernet's draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..core.options import Covariance, parse_option
from ..kl import GaussianLayer
from .sizing import matrix_shape

COVARIANCES = tuple(c.value for c in Covariance)


def _lower(raw: Tensor) -> Tensor:
    """Lower-triangular with a positive diagonal: tril(raw, -1) + diag(exp(diag(raw)))."""
    return torch.tril(raw, -1) + torch.diag_embed(raw.diagonal().exp())


class SemiImplicitPosterior(nn.Module):
    """w = g(z) + ε, ε ~ N(0, C), around an implicit sampler (module docstring).

    Args:
        implicit: the sampler of the means, ``sample(n) -> {name: [n, *shape]}``.
        start: ``{name: tensor}`` of the generated tensors' starting values (their shapes and RMS).
        init_scale: the Gaussian layer's std at the start, relative to each tensor's RMS (a tensor of zeros:
            relative to 1 / sqrt(numel)).
        covariance: ``"diagonal"`` or ``"kronecker"`` (:data:`COVARIANCES`).
    """

    def __init__(self, implicit: nn.Module, start: Mapping[str, Tensor], init_scale: float = 0.1,
                 covariance: Covariance | str = Covariance.DIAGONAL) -> None:
        super().__init__()
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be a finite number > 0, got {init_scale!r}")
        self.covariance = parse_option(Covariance, covariance, "covariance").value
        self.implicit = implicit
        self.names = list(start)
        self.shapes = {k: v.shape for k, v in start.items()}
        log_scales, rows, cols = [], [], []
        for v in start.values():
            rms = float(v.detach().float().pow(2).mean().sqrt())
            rms = rms if rms > 0 else 1.0 / math.sqrt(max(v.numel(), 1))
            log_std = math.log(init_scale * rms)
            if covariance == "diagonal":
                log_scales.append(nn.Parameter(torch.full(v.shape, log_std)))
            else:  # A = B = sqrt(std) I at the start: C = std² I
                o, i = matrix_shape(v.shape)
                rows.append(nn.Parameter(torch.eye(o) * 0.5 * log_std))
                cols.append(nn.Parameter(torch.eye(i) * 0.5 * log_std))
        self.log_scales = nn.ParameterList(log_scales)
        self.row_raw = nn.ParameterList(rows)
        self.col_raw = nn.ParameterList(cols)

    def layer_of(self, means: dict[str, Tensor]) -> GaussianLayer:
        """The Gaussian layer (C's parameters) around the given means."""
        if self.covariance == "diagonal":
            return GaussianLayer(means, scales={n: p.exp() for n, p in zip(self.names, self.log_scales, strict=True)})
        return GaussianLayer(means, row_factors={n: _lower(p) for n, p in zip(self.names, self.row_raw, strict=True)},
                             col_factors={n: _lower(p) for n, p in zip(self.names, self.col_raw, strict=True)})

    def scales(self) -> dict[str, Tensor]:
        """The std of every weight under the Gaussian layer, ``{name: [*shape]}`` (Kronecker: the square root of
        diag(AAᵀ) ⊗ diag(BBᵀ))."""
        layer = self.layer_of({})
        if self.covariance == "diagonal":
            return layer.scales
        out = {}
        for n in self.names:
            a, b = layer.row_factors[n], layer.col_factors[n]
            var = (a**2).sum(1)[:, None] * (b**2).sum(1)[None, :]
            out[n] = var.sqrt().reshape(self.shapes[n])
        return out

    def draw(self, n: int) -> tuple[dict[str, Tensor], GaussianLayer]:
        """n draws w = μ + ε and their Gaussian layer."""
        means = self.implicit.sample(n)
        layer = self.layer_of(means)
        if self.covariance == "diagonal":
            draws = {k: means[k] + layer.scales[k] * torch.randn_like(means[k]) for k in self.names}
        else:
            draws = {}
            for k in self.names:
                a, b = layer.row_factors[k], layer.col_factors[k]
                o, i = a.shape[0], b.shape[0]
                e = torch.randn(o, n * i, device=a.device, dtype=a.dtype)
                ae = (a @ e).reshape(o, n, i).transpose(0, 1)                     # A E_n, one matmul for all n
                draws[k] = means[k] + (ae @ b.T).reshape(means[k].shape)
        return draws, layer

    def sample(self, n: int) -> dict[str, Tensor]:
        """n draws ``{name: [n, *shape]}``."""
        return self.draw(n)[0]

    def extra_repr(self) -> str:
        return f"{self.covariance} gaussian layer on {len(self.names)} tensors"


__all__ = ["COVARIANCES", "SemiImplicitPosterior"]
