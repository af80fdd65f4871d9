"""The ``rank1`` BbH layout: point-estimated base weights modulated by rank-1 factors drawn from hypernetworks.

For every generated tensor W of shape [out, in, ...] (a conv kernel [out, in, kh, kw], a dense [out, in], a bias
[out]) the sample is

    W = W0 * ((1 + a) (1 + b)^T)        (broadcast over the kernel window; a bias: W = W0 * (1 + a))

with W0 the main network's own parameter (a point estimate, trained by the optimizer) and the factors
u = (a in R^out, b in R^in) the random
variables: layer-wise hypernets (:class:`bbh.posteriors.hypernet.HypernetPosterior`) map noise to u, so q(u)
is implicit as in the paper, but lives on sum(out + in) variables instead of sum(out x in x ...) — 9,175 for a
CIFAR ResNet-18 of 11.2 M weights. This is the rank-1 parameterisation of Dusenberry et al. (ICML 2020,
"Efficient and Scalable Bayesian Neural Nets with Rank-1 Factors", r = 1 + a, s = 1 + b) with BbH's implicit
q(u) instead of their Gaussians.

The objective, stated for the variables that are random (the ELBO with W0 a MAP point):

    loss = NLL + kl_weight * [ KL(q(u) || p(u)) - log p(W0) ] / N

with p(u) = N(0, factor_prior^2) on every factor deviation (so r, s ~ N(1, factor_prior^2) a priori) estimated
by the method's sample-based KL estimator on u, and p(W0) the method's weight prior (N(0, 1) by default) as the
L2 penalty of MAP (:class:`~bbh.posteriors.point.GaussianPenalty`'s convention: it rides in the KL slot).
The factor hypernets start at the scale ``factor_init`` (hyperfan init), so W starts near the main network's
own initial weights.

**A mixture of K components** (``mixture=K > 1``), as rank-1 BNNs use K mixture components for ensemble-like
diversity (Dusenberry et al. 2020, Sec. 3): q(u) = (1/K) sum_k q(u - m_k | theta), the same implicit q shifted to K
learned means m_k (one per factor variable and component), started at N(0, mixture_init^2) (default 0.1, the factor
prior's scale; BatchEnsemble's baselines start their fast weights at N(1, 0.5^2), and 0.5 (with a factor prior of
0.5) trained a CIFAR ResNet-20 far slower here: 66 % training accuracy after 8 epochs against 81 % at 0.1,
docs/scale.md). A set of n draws takes the components in turn from a random first one (draw i: component (k0 + i)
mod K), so every component is drawn n/K times when K divides n.

The mixture's KL is bounded with its components' own spread: the entropy of a mixture of shifted copies of q is
at least that of q (concavity, H[(1/K) Σ_k q(u - m_k)] >= H[q]), so

    KL(mix || p) <= -H[q] + E_mix[-log p(u)],

estimated with the entropy term of the KL estimator on the *unshifted* draws (all n of them are draws of the one
q) and the exact cross-entropy on the shifted ones (:meth:`draw_full`). The bound loses at most log K nats (the
entropy of the component label). An estimate on the shifted draws instead would see, with one draw per
component, only the distances between the component means, and let every component shrink to a point at no cost
(docs/fidelity.md).

**BatchNorm under a mixture.** Components scale channels differently, so one set of running statistics
normalises every component but the average one wrongly at test time: measured on a ResNet-20 mixture of 4
(CIFAR-5, 1,000 test images), the components reached 40-47 % (``mixture_init`` 0.5) and 55-79 % (0.1)
accuracy with the shared running statistics against 65-68 % and 80 % with each batch's own. So a mixture
keeps K copies of every BatchNorm layer's running mean and variance (:meth:`add_component_norms`, the
"ensemble BN" of BatchEnsemble's baselines): a draw of component k is normalised, and in training updates,
with copy k; the network's own running statistics are then not used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..kl import GaussianLayer
from .sizing import rank1_factor_shapes


@dataclass(frozen=True)
class FactorDraws:
    """n draws of the factors: ``values`` (what the network uses: shifted to their component's mean under a
    mixture), ``components`` (each draw's component, [n]; None without a mixture), ``unshifted`` (the draws of the
    implicit q before the shift, the same as ``values`` without a mixture) and ``layer`` (the Gaussian layer of
    ``unshifted`` when q is semi-implicit, else None)."""

    values: dict[str, Tensor]
    components: Tensor | None
    unshifted: dict[str, Tensor]
    layer: GaussianLayer | None


class Rank1Posterior(nn.Module):
    """q(W) = W0 * ((1 + a)(1 + b)^T), (a, b) ~ q(u | theta) implicit (module docstring).

    W0 is not held here: :meth:`weights` and :meth:`sample` take it (``{name: tensor}``), so that the base
    weights stay the main network's own parameters, stored and trained once.

    Args:
        shapes: ``{name: shape}`` of the generated tensors.
        factors: the implicit distribution of the factors, a module with ``sample(n) -> {name: [n, *shape]}``
            over :func:`~bbh.posteriors.sizing.rank1_factor_shapes` (BbH passes layer-wise
            :class:`bbh.posteriors.hypernet.HypernetPosterior` started at :func:`factor_start` values).
        mixture: K, the number of mixture components (1: q(u) itself; module docstring).
        mixture_init: the std of the component means m_k at the start.
    """

    def __init__(self, shapes: Mapping[str, torch.Size], factors: nn.Module, mixture: int = 1,
                 mixture_init: float = 0.1) -> None:
        super().__init__()
        if not shapes:
            raise ValueError("no parameter tensors to generate")
        if int(mixture) != mixture or mixture < 1:
            raise ValueError(f"mixture must be a whole number >= 1, got {mixture!r}")
        self.names = list(shapes)
        self.shapes = {n: torch.Size(s) for n, s in shapes.items()}
        self.total = sum(s.numel() for s in self.shapes.values())
        self.factor_shapes = rank1_factor_shapes(self.shapes)
        self.factors = factors
        self.mixture = int(mixture)
        # m_k per factor tensor, [K, *shape], in the order of factor_shapes; none for K = 1
        self.means = nn.ParameterList(
            [nn.Parameter(torch.randn(self.mixture, *s) * float(mixture_init)) for s in self.factor_shapes.values()]
            if self.mixture > 1 else [])
        self.norm_layers: list[str] = []  # BatchNorm layers with K copies of their statistics (add_component_norms)

    @staticmethod
    def factor_start(shapes: Mapping[str, torch.Size], factor_init: float) -> dict[str, Tensor]:
        """Constant tensors of RMS ``factor_init`` over the factor shapes: the scale the hyperfan init of the
        factor hypernets starts at (so W starts within a few % of W0)."""
        return {k: torch.full(s, float(factor_init)) for k, s in rank1_factor_shapes(shapes).items()}

    def sample_factors(self, n: int) -> dict[str, Tensor]:
        """n draws of the random variables ``{"<name>:out": [n, out], "<name>:in": [n, in]}`` (a mixture: draw i
        from component :meth:`components` [i])."""
        return self.draw(n)[0]

    def draw(self, n: int) -> tuple[dict[str, Tensor], Tensor | None]:
        """n draws of the factors and the component of each (``[n]``; None without a mixture)."""
        full = self.draw_full(n)
        return full.values, full.components

    def draw_full(self, n: int) -> FactorDraws:
        """n draws of the factors with what a KL estimate needs besides them (:class:`FactorDraws`)."""
        draw = getattr(self.factors, "draw", None)
        draws, layer = draw(n) if callable(draw) else (self.factors.sample(n), None)
        if self.mixture == 1:
            return FactorDraws(draws, None, draws, layer)
        k = self.components(n, next(iter(draws.values())).device)
        shifted = {name: draws[name] + m[k] for name, m in zip(self.factor_shapes, self.means, strict=True)}
        return FactorDraws(shifted, k, draws, layer)

    def add_component_norms(self, model: nn.Module) -> None:
        """Keep K copies of the running mean and variance of every BatchNorm layer of ``model`` that tracks them
        (a mixture only; module docstring), started at the layer's own."""
        if self.mixture == 1:
            raise ValueError("component BatchNorm statistics need a mixture (mixture > 1)")
        self.norm_layers = []
        for name, module in model.named_modules():
            if (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
                    and module.running_mean is not None and module.running_var is not None):
                i = len(self.norm_layers)
                self.register_buffer(f"norm_mean_{i}", module.running_mean.detach().repeat(self.mixture, 1))
                self.register_buffer(f"norm_var_{i}", module.running_var.detach().repeat(self.mixture, 1))
                self.norm_layers.append(name)

    def component_norms(self, k: Tensor | int) -> dict[str, Tensor]:
        """The running statistics ``{"<layer>.running_mean": ..., "<layer>.running_var": ...}`` of component ``k``
        (an int: views of the stored copies, so a training pass updates them in place), or of each draw's
        component (``k`` of shape [n]: ``[n, C]`` copies, for a batched forward of n draws). Empty without
        :meth:`add_component_norms`."""
        out: dict[str, Tensor] = {}
        for i, name in enumerate(self.norm_layers):
            out[f"{name}.running_mean"] = getattr(self, f"norm_mean_{i}")[k]
            out[f"{name}.running_var"] = getattr(self, f"norm_var_{i}")[k]
        return out

    def components(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """The components of n draws: (k0 + i) mod K for i < n, k0 uniform on {0, ..., K - 1} (torch's RNG)."""
        start = torch.randint(self.mixture, ()) if self.mixture > 1 else torch.tensor(0)
        return (start + torch.arange(n)).remainder(self.mixture).to(device)

    def weights(self, factors: Mapping[str, Tensor], base: Mapping[str, Tensor],
                first: int | None = None) -> dict[str, Tensor]:
        """The weights ``{name: [n, *shape]}`` of the factor draws on the base weights ``base`` (W0), only the
        first ``first`` draws if given."""
        out = {}
        for name in self.names:
            w0 = base[name]
            a = factors[f"{name}:out"][:first]
            extra = (1,) * (w0.dim() - 1)
            w = w0 * (1 + a).reshape(a.shape[0], -1, *extra)
            if w0.dim() >= 2:
                b = factors[f"{name}:in"][:first]
                w = w * (1 + b).reshape(b.shape[0], 1, -1, *extra[1:])
            out[name] = w
        return out

    def sample(self, n: int, base: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """n weight samples ``{name: [n, *shape]}`` around the base weights ``base``, with each draw's BatchNorm
        statistics (``[n, C]``) where the mixture keeps them (:meth:`add_component_norms`)."""
        if int(n) < 1:
            raise ValueError(f"number of samples must be >= 1, got {n}")
        factors, k = self.draw(int(n))
        out = self.weights(factors, base)
        if k is not None:
            out.update(self.component_norms(k))
        return out

    def extra_repr(self) -> str:
        return (f"rank1: tensors={len(self.names)}, generated={self.total}, "
                f"random factors={sum(s.numel() for s in self.factor_shapes.values())}"
                + (f", mixture of {self.mixture}" if self.mixture > 1 else ""))


__all__ = ["Rank1Posterior"]
