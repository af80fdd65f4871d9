"""Bayes by Hypernet (Pawlowski et al., 2017): hypernetworks as implicit weight posteriors.

A hypernetwork G(z | θ) maps noise z ~ N(0, I_d) to a sample of the main network's weights, so it defines
an implicit distribution q(w | θ) that can be sampled but has no tractable density. Training minimises the
negative ELBO (see :mod:`bbh.elbo`) whose KL(q || p) is estimated from samples (:mod:`bbh.kl`, Eq. 2).

Hypernet architecture (paper Sec. 3, docs/protocol.md §2): input ``[z, c]`` with c a one-hot conditioning
vector (the constant 1 when there is a single slice), hidden layers (64, 256, 512) with LeakyReLU(0.1),
and a linear output layer. Three layouts (paper Table 1, :class:`~bbh.options.Layout`):

* ``layerwise`` — one hypernet per parameter tensor emitting the whole tensor. The hidden layers of all
  hypernets have the same shape and run as one batched matmul per layer; the output layers (the LeNet
  fc1-weight head alone is 512 x 400,000) run through :class:`_HeadLinear`, whose forward and backward
  use the matmul layouts that are fast for a handful of rows.
* ``sliced`` — one hypernet per tensor conditioned on the one-hot index of an **output channel**: in
  PyTorch's layout ([out, in, ...]) slice c is exactly the weights of output channel c. The authors'
  TensorFlow code concatenated its slices into the flat HWIO vector, so its "slices" were contiguous
  chunks spanning several input positions x all output channels (docs/protocol.md §2.3), not channels.
  1-d tensors (biases) are generated unsliced, as theirs.
* ``single`` — one hypernet for all parameters, conditioned on a chunk index over the flat parameter
  vector (parameters concatenated in the model's order, each in PyTorch layout; the authors used TF
  layouts). ``num_chunks=130`` gives 130 chunks of 3,316 for LeNet-5, the paper's case.
* ``chunked`` — the scalable form of ``single``: the chunk index enters as a learned embedding e_c of
  ``embedding_dim`` values instead of a C-dimensional one-hot vector, so the input layer no longer grows with
  the number of chunks, and all C chunks of all n samples are generated in one batched call ([n C, d + E] ->
  [n C, K]). Its parameters are C E + trunk + (H + 1) K whatever the network (``chunk_size`` K = 4,096:
  a 11.2 M-weight ResNet-18 gets 2,728 chunks and 2.3 M hypernet parameters). With ``noise="independent"``
  every chunk of every sample draws its own z.

The ``rank1`` layout (random rank-1 factors of point-estimated base weights) is
:class:`bbh.posteriors.rank1.Rank1Posterior`, built on this class; :mod:`bbh.posteriors.sizing` counts every
layout's parameters before it is built and chooses ``auto``.

Initialisation (:class:`~bbh.options.Init`): ``hyperfan`` (default) gives hidden layers Kaiming init for
the LeakyReLU and scales each output layer so that the generated weights start with the root-mean-square
of the main network's own initial parameter values (hyperfan-in, Chang et al., ICLR 2020, with the
E||h||^2 of the last hidden layer measured on noise draws instead of derived): Var(W_out) = rms^2 / E||h||^2.
``glorot`` is the authors' (Glorot-uniform kernels, zero biases); it generates LeNet weights several times
smaller than the usual init and leaves MNIST training near chance for hundreds of steps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import ops
from ..backends.factored import offer_factors
from ..core.elbo import LossTerms, elbo
from ..core.functional import forward_samples, forward_with
from ..core.likelihoods import Likelihood
from ..core.options import (
    Covariance,
    Init,
    Layout,
    LikelihoodSamples,
    Noise,
    check_float,
    check_int,
    check_sizes,
    parse_option,
)
from ..core.priors import NormalPrior, Prior
from ..kl import GaussianLayer, KLEstimator, estimate_kl, make_kl_estimator
from .factory import register
from .protocol import ParamFilter, check_finite, select_parameters
from .rank1 import Rank1Posterior
from .sampled import WeightSampler
from .semi_implicit import SemiImplicitPosterior
from .sizing import check_fits, choose_layout, size_of


class _HeadLinear(torch.autograd.Function):
    """y = h W^T + b for few rows h [M, H] and a very wide W [P, H].

    ``F.linear`` is several times slower here on CPU, and autograd's default backward of ``W @ h^T``
    computes dh as the pathological ``W^T @ dy^T``; this Function fixes the layouts (through
    :mod:`bbh.backends.ops`, native kernels where they apply): forward ``(W @ h^T)^T``, backward
    ``dh = dy @ W``, ``db = Σ_m dy_m`` and the rank-M weight gradient

        dW = dy^T h = L R,   L = dy^T [P, M],  R = h [M, H].

    By default dW is returned dense (``dy^T`` made contiguous first), so ``.grad`` is filled as PyTorch
    expects. Only inside an optimizer's own ``factored_backward()`` context that updates W
    (:func:`bbh.backends.factored.offer_factors`) is dW handed over as its factors (L, R) and never
    materialised.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        ctx.h_dtype = h.dtype
        h = h.to(weight.dtype)  # under autocast the trunk may hand over bfloat16/float16; the head stays fp32
        ctx.save_for_backward(h, weight)
        return ops.head_forward(weight, h, bias)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        h, weight = ctx.saved_tensors
        dh = dw = db = None
        dy = dy.to(weight.dtype)
        if ctx.needs_input_grad[0]:
            dh = _few_rows_times_tall(dy, weight).to(ctx.h_dtype)
        if ctx.needs_input_grad[1] and not offer_factors(weight, dy.t(), h):
            dw = dy.t().contiguous() @ h
        if ctx.needs_input_grad[2]:
            db = dy.sum(0)
        return dh, dw, db


def _few_rows_times_tall(dy: Tensor, weight: Tensor) -> Tensor:
    """dh = dy @ W for dy [M, P] with few rows M and W [P, H] with very many rows P
    (:func:`bbh.backends.ops.head_input_grad`: native kernel, or a batched matmul over row blocks)."""
    return ops.head_input_grad(dy, weight)


class HypernetHead(nn.Module):
    """The linear output layer of a hypernet: [M, H] -> [M, P], y = h W^T + b (:class:`_HeadLinear`).

    Its weight gradient is rank M (dW = dy^T h): bbh's optimizers can take it as factors during their own
    backward pass (``with optimizer.factored_backward(): loss.backward()``); any other backward fills
    ``weight.grad`` densely. On the CPU the large heads run through native kernels where available
    (:mod:`bbh.backends.native`); library users may also ``export THP_MEM_ALLOC_ENABLE=1`` before starting
    Python so that PyTorch backs these large tensors with transparent huge pages (bbh sets no environment
    variable at import; the ``bbh`` command line does this for its own process).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, h: Tensor) -> Tensor:
        return _HeadLinear.apply(h, self.weight, self.bias)


class HypernetTrunk(nn.Module):
    """T parallel MLPs of identical shape (the hidden layers of T hypernets), run as batched matmuls.

    ``forward(x [T, M, in]) -> [T, M, hidden[-1]]``; layer l computes LeakyReLU(x W_l^T + b_l) with
    W_l of shape [T, out, in].
    """

    def __init__(self, num: int, in_features: int, hidden: Sequence[int], negative_slope: float,
                 activation: str = "leaky_relu") -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(num, b, a)) for a, b in zip(sizes, sizes[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(num, b)) for b in sizes[1:]])
        self.negative_slope = negative_slope
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        for w, b in zip(self.weights, self.biases):
            x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            x = (F.leaky_relu(x, self.negative_slope) if self.activation == "leaky_relu"
                 else _ACTIVATIONS[self.activation](x))
        return x


def _glorot_(w: Tensor) -> None:
    """Glorot-uniform on the last two dims (each slice of a stacked weight separately)."""
    fan_out, fan_in = w.shape[-2], w.shape[-1]
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(w, -bound, bound)


_ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "elu": F.elu}
ACTIVATIONS = ("leaky_relu", *_ACTIVATIONS)
"""Hidden-layer activations of the hypernets (the paper: LeakyReLU with slope 0.1)."""


def _kaiming_(w: Tensor, negative_slope: float, activation: str = "leaky_relu") -> None:
    """Kaiming-uniform, Var = gain^2 / fan_in (LeakyReLU(a): gain^2 = 2 / (1 + a^2))."""
    fan_in = w.shape[-1]
    # torch has no ELU gain; SELU's 3/4 is used as a stand-in. The exact output rescaling of the hyperfan
    # initialisation makes the generated scale right whatever the hidden layers' gain.
    gain = nn.init.calculate_gain("leaky_relu", negative_slope) if activation == "leaky_relu" else \
        nn.init.calculate_gain("selu" if activation == "elu" else activation)
    bound = gain * math.sqrt(3.0 / fan_in)
    nn.init.uniform_(w, -bound, bound)


class _Target:
    """One generated parameter tensor: its name, shape, and how it is sliced."""

    def __init__(self, name: str, shape: torch.Size, sliced: bool) -> None:
        self.name, self.shape = name, shape
        self.slices = shape[0] if (sliced and len(shape) >= 2 and shape[0] > 1) else 1
        self.numel = shape.numel()
        self.slice_size = self.numel // self.slices


class HypernetPosterior(nn.Module):
    """The implicit distribution q(w | θ) over named parameter tensors, defined by hypernetworks.

    Args:
        shapes: ``{name: shape}`` of the generated tensors, in order.
        init_values: ``{name: tensor}`` of the main network's initial values (their RMS sets the scale of
            the ``hyperfan`` initialisation); may be None with ``init="glorot"``.
        layout, noise, init: see :mod:`bbh.options`.
        noise_dim: d, the dimension of z (paper Table 2: 1 or 8).
        hidden: hidden layer sizes of every hypernet.
        negative_slope: LeakyReLU slope (0.1).
        activation: hidden activation, one of :data:`ACTIVATIONS` (``"leaky_relu"``).
        num_chunks: C for the ``single`` layout.
        chunk_size: K, weights per chunk of the ``chunked`` layout (the last chunk is cut to the total).
        embedding_dim: E, the size of the learned chunk embeddings of the ``chunked`` layout.
        zero_mean_noise: centre z over the samples of one call (the authors' ``--force_zero_mean``
            subtracts the mean over samples; applied here to the noise, where it keeps the generated
            weights' mean free — a documented interpretation).
        init_spread: with ``hyperfan``, the spread of the draws at the start, as the RMS over weights of their
            std over draws divided by their RMS (None: whatever the init gives, about 0.5 for LeNet-5: every
            weight then starts with half its size as noise). Set by scaling the noise inputs' first-layer
            weights (:meth:`_calibrate_spread`).
    """

    def __init__(self, shapes: dict[str, torch.Size], init_values: dict[str, Tensor] | None = None, *,
                 layout: Layout | str = Layout.LAYERWISE, noise: Noise | str = Noise.INDEPENDENT,
                 init: Init | str = Init.HYPERFAN, noise_dim: int = 1, hidden: Sequence[int] = (64, 256, 512),
                 negative_slope: float = 0.1, num_chunks: int = 130, zero_mean_noise: bool = False,
                 activation: str = "leaky_relu", chunk_size: int = 4096, embedding_dim: int = 32,
                 init_spread: float | None = None) -> None:
        super().__init__()
        if init_spread is not None:
            init_spread = check_float("init_spread", init_spread, 0, open_low=True)
        self.init_spread = init_spread
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(map(repr, ACTIVATIONS))}")
        self.activation = activation
        self.layout = parse_option(Layout, layout, "layout")
        self.noise = parse_option(Noise, noise, "noise")
        self.init_scheme = parse_option(Init, init, "init")
        noise_dim = check_int("noise_dim", noise_dim, 1)
        hidden = check_sizes("hidden", hidden)
        num_chunks = check_int("num_chunks", num_chunks, 1)
        chunk_size = check_int("chunk_size", chunk_size, 1)
        embedding_dim = check_int("embedding_dim", embedding_dim, 1)
        if self.layout not in (Layout.LAYERWISE, Layout.SLICED, Layout.SINGLE, Layout.CHUNKED):
            raise ValueError(f"HypernetPosterior generates weights with the layerwise, sliced, single or chunked "
                             f"layout, not {self.layout.value!r} (rank1: bbh.posteriors.rank1.Rank1Posterior; "
                             f"auto: bbh.posteriors.sizing.choose_layout)")
        negative_slope = check_float("negative_slope", negative_slope)
        if not shapes:
            raise ValueError("no parameter tensors to generate")
        self.noise_dim = noise_dim
        self.zero_mean_noise = bool(zero_mean_noise)
        self.targets = [_Target(n, torch.Size(s), self.layout == Layout.SLICED) for n, s in shapes.items()]
        self.total = sum(t.numel for t in self.targets)
        d, h_last = self.noise_dim, hidden[-1]

        if self.layout == Layout.LAYERWISE:
            self.trunks = nn.ModuleList([HypernetTrunk(len(self.targets), d + 1, hidden, negative_slope, activation)])
            self.heads = nn.ModuleList([HypernetHead(h_last, t.numel) for t in self.targets])
        elif self.layout == Layout.SLICED:
            self.trunks = nn.ModuleList(
                [HypernetTrunk(1, d + t.slices, hidden, negative_slope, activation) for t in self.targets])
            self.heads = nn.ModuleList([HypernetHead(h_last, t.slice_size) for t in self.targets])
        elif self.layout == Layout.SINGLE:
            self.num_chunks = min(num_chunks, self.total)
            self.chunk_size = math.ceil(self.total / self.num_chunks)
            self.trunks = nn.ModuleList([HypernetTrunk(1, d + self.num_chunks, hidden, negative_slope, activation)])
            self.heads = nn.ModuleList([HypernetHead(h_last, self.chunk_size)])
        else:  # chunked: learned embeddings of the chunk index, many rows -> an ordinary linear head
            self.chunk_size = min(chunk_size, self.total)
            self.num_chunks = math.ceil(self.total / self.chunk_size)
            self.embedding = nn.Parameter(torch.randn(self.num_chunks, embedding_dim) / math.sqrt(embedding_dim))
            self.trunks = nn.ModuleList([HypernetTrunk(1, d + embedding_dim, hidden, negative_slope, activation)])
            self.heads = nn.ModuleList([nn.Linear(h_last, self.chunk_size)])
        self._initialise(init_values, negative_slope)

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def _initialise(self, init_values: dict[str, Tensor] | None, negative_slope: float) -> None:
        for trunk in self.trunks:
            for w, b in zip(trunk.weights, trunk.biases):
                (_glorot_(w) if self.init_scheme == Init.GLOROT else _kaiming_(w, negative_slope, self.activation))
                b.zero_()
        for head in self.heads:
            head.bias.zero_()
            _glorot_(head.weight)
        if self.init_scheme == Init.GLOROT:
            return
        if init_values is None:
            raise ValueError("init='hyperfan' needs the main network's initial values (init_values)")
        # Hyperfan-in with a measured E||h||^2: Var(W_out) = target_rms^2 / E||h||^2, then one exact
        # correction so that the generated weights' RMS over these draws equals the target (small heads,
        # e.g. a 10-element bias, would otherwise miss it by tens of percent through sampling noise alone).
        hs = self._hidden(4 if self.layout == Layout.CHUNKED else 32)  # chunked: 4 x C rows are plenty
        for head, h, rms in zip(self.heads, hs, self._head_target_rms(init_values)):
            energy = float(h.pow(2).sum(-1).mean())
            std = rms / math.sqrt(max(energy, 1e-12))
            nn.init.uniform_(head.weight, -math.sqrt(3) * std, math.sqrt(3) * std)
        self._match_head_rms(hs, init_values)
        if self.init_spread is not None:
            self._calibrate_spread(self.init_spread, init_values)

    def _spread_ratio(self) -> float:
        """RMS over weights of the std over 64 draws, divided by the RMS of the draws."""
        flat = torch.cat([v.reshape(v.shape[0], -1) for v in self.sample(64).values()], dim=1)
        return float(flat.std(0).pow(2).mean().sqrt() / flat.pow(2).mean().sqrt().clamp_min(1e-12))

    def _calibrate_spread(self, spread: float, init_values: dict[str, Tensor]) -> None:
        """Scale the noise inputs' weights of every trunk's first layer until the draws' spread is ``spread``
        times their RMS, then restore each head's output RMS (a few proportional corrections: the trunk is
        nonlinear)."""
        for _ in range(4):
            ratio = self._spread_ratio()
            if ratio <= 0:
                break
            for trunk in self.trunks:
                trunk.weights[0][..., : self.noise_dim].mul_(spread / ratio)
            self._match_head_rms(self._hidden(4 if self.layout == Layout.CHUNKED else 32), init_values)

    def _match_head_rms(self, hs: list[Tensor], init_values: dict[str, Tensor]) -> None:
        """Scale each head (weight and bias) so that its outputs on the hidden activations ``hs`` have exactly the
        target RMS of :meth:`_head_target_rms`."""
        for head, h, rms in zip(self.heads, hs, self._head_target_rms(init_values)):
            realised = float((h @ head.weight.t() + head.bias).pow(2).mean().sqrt())
            if realised > 0:
                head.weight.mul_(rms / realised)
                head.bias.mul_(rms / realised)

    def _head_target_rms(self, init_values: dict[str, Tensor]) -> list[float]:
        def rms(t: _Target) -> float:
            v = init_values[t.name].detach().float()
            r = float(v.pow(2).mean().sqrt())
            return r if r > 0 else 1.0 / math.sqrt(t.numel)

        if self.layout in (Layout.SINGLE, Layout.CHUNKED):
            total_sq = sum(rms(t) ** 2 * t.numel for t in self.targets)
            return [math.sqrt(total_sq / self.total)]
        return [rms(t) for t in self.targets]

    # ------------------------------------------------------------------ sampling
    def _noise(self, n: int, groups: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """z of shape [groups, n, d]: one draw expanded (shared) or one per group (independent)."""
        k = 1 if self.noise == Noise.SHARED else groups
        z = torch.randn(k, n, self.noise_dim, device=device, dtype=dtype)
        if self.zero_mean_noise and n > 1:
            z = z - z.mean(dim=1, keepdim=True)
        return z.expand(groups, n, self.noise_dim)

    def _conditioned(self, z: Tensor, slices: int) -> Tensor:
        """[z, onehot(c)] for every sample and slice: [n * slices, d + slices] (sample-major)."""
        n, d = z.shape
        eye = torch.eye(slices, device=z.device, dtype=z.dtype)
        return torch.cat([z.repeat_interleave(slices, dim=0), eye.repeat(n, 1)], dim=1)

    def _hidden(self, n: int) -> list[Tensor]:
        """Last hidden activations feeding each head, [M, H] per head."""
        p = self.heads[0].weight
        if self.layout == Layout.LAYERWISE:
            z = self._noise(n, len(self.targets), p.device, p.dtype)
            ones = torch.ones(*z.shape[:2], 1, device=p.device, dtype=p.dtype)
            return list(self.trunks[0](torch.cat([z, ones], dim=-1)).unbind(0))
        if self.layout == Layout.SLICED:
            z = self._noise(n, len(self.targets), p.device, p.dtype)
            return [trunk(self._conditioned(z[i], t.slices).unsqueeze(0))[0]
                    for i, (trunk, t) in enumerate(zip(self.trunks, self.targets))]
        if self.layout == Layout.SINGLE:
            z = self._noise(n, 1, p.device, p.dtype)[0]
            return [self.trunks[0](self._conditioned(z, self.num_chunks).unsqueeze(0))[0]]
        # chunked: rows [sample 0: chunks 0..C-1, sample 1: ...], input [z, e_c]
        z = self._noise(n, self.num_chunks, p.device, p.dtype).transpose(0, 1).reshape(n * self.num_chunks, -1)
        x = torch.cat([z, self.embedding.repeat(n, 1)], dim=1)
        return [self.trunks[0](x.unsqueeze(0))[0]]

    def sample(self, n: int) -> dict[str, Tensor]:
        """Draw n weight samples: ``{name: Tensor[n, *shape]}``, one batched call per hypernet."""
        if int(n) < 1:
            raise ValueError(f"number of samples must be >= 1, got {n}")
        n = int(n)
        hs = self._hidden(n)
        if self.layout in (Layout.SINGLE, Layout.CHUNKED):
            flat = self.heads[0](hs[0]).reshape(n, -1)[:, : self.total]
            parts = flat.split([t.numel for t in self.targets], dim=1)
            return {t.name: part.reshape(n, *t.shape) for t, part in zip(self.targets, parts)}
        return {t.name: head(h).reshape(n, *t.shape) for t, head, h in zip(self.targets, self.heads, hs)}

    def extra_repr(self) -> str:
        chunks = (f", chunks={self.num_chunks}x{self.chunk_size}"
                  if self.layout in (Layout.SINGLE, Layout.CHUNKED) else "")
        return (f"layout={self.layout.value}, noise={self.noise.value}, noise_dim={self.noise_dim}, "
                f"init={self.init_scheme.value}, tensors={len(self.targets)}, generated={self.total}{chunks}")


@dataclass(frozen=True)
class _StepDraws:
    """One training step's draws: the random variables (``variables``: weights, or rank1's shifted factors),
    the weights of the passes, the mixture components, and the unshifted draws and Gaussian layer the KL uses."""

    variables: dict[str, Tensor]
    weights: dict[str, Tensor]
    components: Tensor | None
    unshifted: dict[str, Tensor]
    layer: GaussianLayer | None


RANK1_LR = {"adam": 1e-3, "rmsprop-tf": 1e-4}
"""The Trainer's default learning rates for the ``rank1`` layout (see :class:`BayesByHypernet`)."""


@register("bbh")
class BayesByHypernet(WeightSampler):
    """Bayes by Hypernet for any ``nn.Module``.

    Per training step ``draws_per_step`` weight sets are generated in one batched call; all of them enter the
    KL estimate, and ``likelihood_samples`` chooses which enter the NLL (:class:`~bbh.options.LikelihoodSamples`:
    ``one`` — the authors' code, ``average`` — the Monte Carlo ELBO, ``mixture`` — log-mean-exp, ``split`` —
    the minibatch cut into S parts, part s under sample s).

    Args:
        model: the main network; parameters selected by ``params`` become random variables and their own
            values are only used to set the initial scale (``requires_grad`` is switched off).
        likelihood: ``"categorical"`` or a likelihood object (``bbh.likelihoods.Gaussian(9.0)``).
        prior: a prior with ``sample(shape)`` or a number (the scale of a N(0, s^2) prior; paper: 1).
        params: which parameters are random (see :func:`~bbh.posteriors.base.select_parameters`); default
            every weight and bias of Linear and Conv layers. Unselected parameters (normalisation affine
            parameters, by default) stay point estimates trained by the optimizer.
        layout: ``"auto"`` (default) — the paper's ``layerwise`` where training its hypernets takes at most
            :data:`~bbh.posteriors.sizing.AUTO_BUDGET_BYTES` (LeNet-5, ResNet-32: unchanged), ``rank1`` above
            (a ResNet-18); or any :class:`~bbh.options.Layout`. The chosen layout and its size are ``self.size``
            (:class:`~bbh.posteriors.sizing.HypernetSize`), computed before anything is allocated; a layout
            whose training state cannot fit the device's memory raises
            :class:`~bbh.posteriors.sizing.HypernetTooLargeError` with the estimate and the alternatives.
        noise, noise_dim, hidden, negative_slope, activation, init, num_chunks, zero_mean_noise, chunk_size,
            embedding_dim: the hypernetwork (:class:`HypernetPosterior`).
        factor_prior: the ``rank1`` layout's prior scale s_u of the factor deviations, p(a), p(b) = N(0, s_u^2)
            (:mod:`bbh.posteriors.rank1`); ``prior`` is then the prior of the base weights (their L2 term).
        factor_init: the ``rank1`` factors' scale at initialisation.
        mixture: K > 1 makes the ``rank1`` factor posterior a mixture of K shifted copies of the implicit q
            (:mod:`bbh.posteriors.rank1`; rank-1 BNNs' ensemble-like components); 1 (default): none.
        mixture_init: the std of the mixture's component means at the start (default 0.1, the factor prior's
            default scale; 0.5 trained a ResNet-20 far slower, docs/scale.md).
        semi_implicit: put a learned Gaussian layer on the hypernet's draws, w = g(z) + ε with ε ~ N(0, C)
            (:mod:`bbh.posteriors.semi_implicit`; Yin & Zhou 2018). None (default): exactly when the KL estimator
            uses it (``kl="semi-implicit"``).
        semi_implicit_init: the Gaussian layer's std at the start, relative to each tensor's RMS (default 0.1).
        covariance: the Gaussian layer's C, ``"diagonal"`` (default) or ``"kronecker"`` (per tensor AAᵀ ⊗ BBᵀ,
            correlations within a layer; :class:`~bbh.options.Covariance`).
        init_spread: the spread of the hypernet's draws at the start relative to their RMS (default 0.05;
            :class:`HypernetPosterior`); None keeps the init's own (about 0.5 on LeNet-5, which a network trains
            through badly: docs/fidelity.md). Applies to the weight-generating layouts with ``init="hyperfan"``;
            ``rank1``'s factor hypernets and ``init="glorot"`` keep their own.
        check_memory: refuse a layout whose training state exceeds the available memory (default True).
        draws_per_step: S, weight samples generated per training step (paper: 5; the authors' ``num_samples``).
        num_samples: the former name of ``draws_per_step`` (deprecated: a ``DeprecationWarning``; it named
            predictive draws elsewhere in bbh, which are ``n_samples``).
        likelihood_samples: see above (default ``one``, as the authors).
        kl: ``"semi-implicit"``, ``"nn-per-weight"`` (the paper's Eq. 2), ``"nn-full"``, ``"nn-entropy"``, ... or
            any :class:`~bbh.kl.KLEstimator`; default (None) ``"semi-implicit"`` (its entropy gradient is exact in
            every direction, docs/fidelity.md), except ``"nn-entropy"`` for ``rank1`` (below) and
            ``"nn-per-weight"`` for a prior that can only be sampled (no ``log_prob``).
        num_prior_samples: m, prior samples per step for the nearest-neighbour estimators (paper: 5).

    The Trainer's default learning rate for BbH is 2e-5 with Adam and the authors' 1e-4 with RMSProp-TF.
    Adam moves every head weight by ~lr per step and, the head's gradient being rank S, all 512 weights
    feeding one generated weight move coherently: the generated weight moves by up to lr * ||h||_1, so BbH
    needs a smaller Adam step than its main network would (the measurements: docs/design.md, "Learning rates").

    The ``rank1`` layout trains the main network's own weights W0 with the factor hypernets, and its defaults
    are Adam at lr 1e-3 (:data:`RANK1_LR`, W0 needs MAP's learning rate) and the entropy KL ``"nn-entropy"``
    (the per-weight estimate lets the factors grow far past the prior's scale; docs/design.md).
    """

    @property
    def num_samples(self) -> int:
        """Deprecated: :attr:`draws_per_step`."""
        warnings.warn("BayesByHypernet.num_samples is renamed draws_per_step", DeprecationWarning, stacklevel=2)
        return self.draws_per_step

    default_lr = {"adam": 2e-5, "rmsprop-tf": 1e-4}

    def __init__(self, model: nn.Module, likelihood: Likelihood | str = "categorical", prior: Prior | float = 1.0,
                 params: ParamFilter = None, layout: Layout | str = Layout.AUTO,
                 noise: Noise | str = Noise.INDEPENDENT, noise_dim: int = 1, hidden: Sequence[int] = (64, 256, 512),
                 negative_slope: float = 0.1, activation: str = "leaky_relu", init: Init | str = Init.HYPERFAN,
                 num_chunks: int = 130,
                 zero_mean_noise: bool = False, draws_per_step: int = 5,
                 likelihood_samples: LikelihoodSamples | str = LikelihoodSamples.ONE,
                 kl: str | KLEstimator | None = None, num_prior_samples: int = 5, chunk_size: int = 4096,
                 embedding_dim: int = 32, factor_prior: float = 0.1, factor_init: float = 0.05,
                 mixture: int = 1, mixture_init: float = 0.1, semi_implicit: bool | None = None,
                 semi_implicit_init: float = 0.1, covariance: Covariance | str = Covariance.DIAGONAL,
                 init_spread: float | None = 0.05, check_memory: bool = True,
                 num_samples: int | None = None) -> None:
        super().__init__(model, likelihood, prior)
        self.param_names = select_parameters(model, params)
        named = dict(model.named_parameters())
        if num_samples is not None:
            warnings.warn("BayesByHypernet(num_samples=...) is renamed draws_per_step=... (num_samples is deprecated)",
                          DeprecationWarning, stacklevel=3)
            draws_per_step = num_samples
        self.draws_per_step = check_int("draws_per_step", draws_per_step, 2)  # the KL estimator compares samples
        num_prior_samples = check_int("num_prior_samples", num_prior_samples, 1)
        self.likelihood_samples = parse_option(LikelihoodSamples, likelihood_samples, "likelihood_samples")
        shapes = {n: named[n].shape for n in self.param_names}
        sizing_options = dict(noise_dim=check_int("noise_dim", noise_dim, 1), hidden=check_sizes("hidden", hidden),
                              num_chunks=check_int("num_chunks", num_chunks, 1),
                              chunk_size=check_int("chunk_size", chunk_size, 1),
                              embedding_dim=check_int("embedding_dim", embedding_dim, 1),
                              mixture=check_int("mixture", mixture, 1))
        layout = parse_option(Layout, layout, "layout")
        if layout == Layout.AUTO:
            layout = choose_layout(shapes, **sizing_options)
        if mixture > 1 and layout != Layout.RANK1:
            raise ValueError(f"mixture={mixture} is an option of the 'rank1' layout, not of {layout.value!r}")
        if kl is None:
            kl = ("nn-entropy" if layout == Layout.RANK1 else
                  "semi-implicit" if callable(getattr(self.prior, "log_prob", None)) else "nn-per-weight")
        self.kl_estimator = make_kl_estimator(kl, num_prior_samples)
        if semi_implicit is None:
            semi_implicit = self.kl_estimator.uses_gaussian_layer
        elif self.kl_estimator.uses_gaussian_layer and not semi_implicit:
            raise ValueError(f"kl={kl!r} bounds the entropy with the Gaussian layer; it needs semi_implicit=True")
        self.semi_implicit = bool(semi_implicit)
        semi_init = check_float("semi_implicit_init", semi_implicit_init, 0, open_low=True)
        covariance = parse_option(Covariance, covariance, "covariance")
        sized = dict(sizing_options, semi_implicit=covariance.value if self.semi_implicit else None)
        self.size = size_of(shapes, layout, **sized)
        device = next(iter(named.values())).device
        if check_memory:
            check_fits(self.size, shapes, device, **sized)
        if init_spread is not None:
            init_spread = check_float("init_spread", init_spread, 0, open_low=True)
        if init_spread is not None and (layout == Layout.RANK1 or parse_option(Init, init, "init") != Init.HYPERFAN):
            init_spread = None  # the factor hypernets and the authors' Glorot init keep their own spread
        hypernet = dict(noise=noise, init=init, noise_dim=noise_dim, hidden=hidden, negative_slope=negative_slope,
                        init_spread=init_spread, zero_mean_noise=zero_mean_noise, activation=activation)
        self.posterior: HypernetPosterior | Rank1Posterior | SemiImplicitPosterior
        if layout == Layout.RANK1:
            if not callable(getattr(self.prior, "log_prob", None)):
                raise ValueError("layout 'rank1' trains the base weights as a MAP point and needs the prior's "
                                 "log_prob; use bbh.NormalPrior or a prior object with log_prob(w)")
            self.factor_prior = NormalPrior(check_float("factor_prior", factor_prior, 0, open_low=True))
            start = Rank1Posterior.factor_start(shapes, check_float("factor_init", factor_init, 0, open_low=True))
            factors: nn.Module = HypernetPosterior({k: v.shape for k, v in start.items()}, start,
                                                   layout=Layout.LAYERWISE, **hypernet)  # type: ignore[arg-type]
            if self.semi_implicit:
                factors = SemiImplicitPosterior(factors, start, semi_init, covariance)
            self.posterior = Rank1Posterior(shapes, factors, mixture=mixture,
                                            mixture_init=check_float("mixture_init", mixture_init, 0))
            if mixture > 1:
                self.posterior.add_component_norms(model)  # K copies of the BatchNorm statistics
            self.default_lr = dict(RANK1_LR)
        else:
            start_values = {n: named[n].detach() for n in self.param_names}
            implicit = HypernetPosterior(
                shapes, start_values, layout=layout, num_chunks=num_chunks,
                chunk_size=chunk_size, embedding_dim=embedding_dim, **hypernet)  # type: ignore[arg-type]
            self.posterior = (SemiImplicitPosterior(implicit, start_values, semi_init, covariance)
                              if self.semi_implicit else implicit)
            for n in self.param_names:
                named[n].requires_grad_(False)
        self.posterior.to(device=device)
        self.layout = layout
        self._last_samples: dict[str, Tensor] | None = None

    def _base(self) -> dict[str, Tensor]:
        """The ``rank1`` layout's base weights W0: the main network's own (trainable) parameters."""
        named = dict(self.model.named_parameters())
        return {n: named[n] for n in self.param_names}

    @property
    def hypernet(self) -> HypernetPosterior:
        """The hypernetwork(s) that generate the weights (``rank1``: the factors), inside the Gaussian layer of a
        semi-implicit posterior."""
        post: nn.Module = self.posterior.factors if isinstance(self.posterior, Rank1Posterior) else self.posterior
        if isinstance(post, SemiImplicitPosterior):
            post = post.implicit
        assert isinstance(post, HypernetPosterior)
        return post

    def estimator_prior(self) -> Prior:
        """The prior the KL estimator compares with: the weight prior, or the factor prior of ``rank1``."""
        return self.factor_prior if self.layout == Layout.RANK1 else self.prior

    def sample(self, n: int) -> dict[str, Tensor]:
        """n posterior weight samples ``{name: Tensor[n, *shape]}`` (a ``rank1`` mixture adds each draw's
        BatchNorm statistics, :meth:`~bbh.posteriors.rank1.Rank1Posterior.component_norms`)."""
        if isinstance(self.posterior, Rank1Posterior):
            return self.posterior.sample(n, self._base())
        return self.posterior.sample(n)

    def weight_samples(self, n: int) -> dict[str, Tensor]:
        """n draws of the random weights only ``{name: Tensor[n, *shape]}`` (:attr:`param_names`)."""
        return {k: v for k, v in self.sample(n).items() if k in self.param_names}

    def _draw(self, n: int, first: int | None) -> _StepDraws:
        """n draws of the random variables with what the KL estimate needs, the weights of the first ``first`` of
        them, and each draw's mixture component (None without a mixture)."""
        if isinstance(self.posterior, Rank1Posterior):
            full = self.posterior.draw_full(n)
            weights = self.posterior.weights(full.values, self._base(), first)
            return _StepDraws(full.values, weights, full.components, full.unshifted, full.layer)
        if isinstance(self.posterior, SemiImplicitPosterior):
            samples, layer = self.posterior.draw(n)
            return _StepDraws(samples, samples, None, samples, layer)
        samples = self.posterior.sample(n)
        return _StepDraws(samples, samples, None, samples, None)

    def _kl(self, draws: _StepDraws) -> Tensor:
        """The KL estimate of a step's draws. A mixture's is bounded with its components' own spread
        (:mod:`bbh.posteriors.rank1`): the estimate on the unshifted draws plus the exact change of the
        cross-entropy, KL <= -H[q] + E_mix[-log p]."""
        prior = self.estimator_prior()
        kl = estimate_kl(self.kl_estimator, draws.unshifted, prior, draws.layer)
        if draws.components is None:
            return kl
        log_p = prior.log_prob  # type: ignore[attr-defined]  # rank1's factor prior is a NormalPrior
        n = draws.components.shape[0]
        shift = sum((-(log_p(draws.variables[k]) - log_p(draws.unshifted[k]))).sum() for k in draws.variables) / n
        return kl + shift

    def _pass_params(self, samples: dict[str, Tensor], s: int, components: Tensor | None) -> dict[str, Tensor]:
        """The parameters of one forward pass under draw ``s``: its weights and, for a mixture, its component's
        BatchNorm statistics (views: a training pass updates that component's copy)."""
        params = {k: v[s] for k, v in samples.items()}
        if components is not None and isinstance(self.posterior, Rank1Posterior):
            params.update(self.posterior.component_norms(int(components[s])))
        return params

    def _forward_rows(self, batch: int) -> tuple[int, str]:
        """``split`` cuts the batch into ``draws_per_step`` parts, one forward pass each: the smallest part, checked
        before any part runs (at least one example each, and what the model needs: BatchNorm in training mode
        more than one value per channel)."""
        if self.likelihood_samples != LikelihoodSamples.SPLIT:
            return batch, ""
        s = self.draws_per_step
        if batch < s:
            raise ValueError(f"likelihood_samples='split' cuts the batch into draws_per_step={s} parts; this batch has "
                             f"{batch} example{'' if batch == 1 else 's'} (nothing was computed)")
        return batch // s, (f"the smallest of the {s} parts likelihood_samples='split' cuts this batch of {batch} "
                            f"into (batches of {2 * s} or more give every part 2 examples)")

    def _loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        """Per-datum negative ELBO: mean NLL + kl_weight * KL / N (:func:`bbh.elbo.elbo`); for ``rank1`` the KL
        is that of the factors plus the base weights' -log p(W0) (:mod:`bbh.posteriors.rank1`)."""
        one = self.likelihood_samples == LikelihoodSamples.ONE
        draws = self._draw(self.draws_per_step, 1 if one else None)
        samples, components = draws.weights, draws.components
        norms = isinstance(self.posterior, Rank1Posterior) and bool(self.posterior.norm_layers)  # only a mixture
        if one:
            outputs = forward_with(self.model, self._pass_params(samples, 0, components), x)
            nll = self.mean_nll(outputs, y)
        elif self.likelihood_samples == LikelihoodSamples.SPLIT:  # batch size checked by _forward_rows
            parts = torch.arange(x.shape[0], device=x.device).tensor_split(self.draws_per_step)
            outputs = torch.cat([forward_with(self.model, self._pass_params(samples, s, components), x[part])
                                 for s, part in enumerate(parts)])
            nll = self.mean_nll(outputs, y)
        else:
            if norms:  # one pass per draw, each updating its own component's statistics
                per_sample = torch.stack([forward_with(self.model, self._pass_params(samples, s, components), x)
                                          for s in range(self.draws_per_step)])
            else:
                per_sample = forward_samples(self.model, samples, x)
            loglik = self.likelihood.log_prob(per_sample, y)  # [S, B]
            if self.likelihood_samples == LikelihoodSamples.AVERAGE:
                nll = -loglik.mean()
            else:
                nll = -(torch.logsumexp(loglik, dim=0) - math.log(loglik.shape[0])).mean()
            outputs = per_sample[0]
        kl = self._kl(draws)
        check_finite("the KL estimate", kl.detach())
        if self.kl_estimator.trainable:
            self._last_samples = {k: v.detach() for k, v in draws.variables.items()}
        if not isinstance(self.posterior, Rank1Posterior):
            return elbo(nll, kl, num_data=num_data, kl_weight=kl_weight, outputs=outputs)
        log_p = self.prior.log_prob  # type: ignore[attr-defined]
        penalty = sum(-(log_p(w) - log_p(torch.zeros_like(w))).sum() for w in self._base().values())
        terms = elbo(nll, kl + penalty, num_data=num_data, kl_weight=kl_weight, outputs=outputs)
        terms.extras.update(kl_factors=float(kl.detach()), base_penalty=float(penalty.detach()))  # type: ignore[union-attr]
        return terms
