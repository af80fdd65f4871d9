"""Post-hoc last-layer Laplace approximation of a trained classifier (the baseline one would pick instead of BbH).

The feature network stays at its trained (MAP) point; the last ``nn.Linear`` layer, the one producing the logits,
gets a Gaussian posterior around its trained weights θ* (Daxberger et al. 2021, "Laplace Redux", Sec. 3):

    p(θ | D) ≈ N(θ*, Σ),    Σ⁻¹ = G + δ I,

with δ the precision of an isotropic prior N(0, δ⁻¹ I) and G the generalised Gauss-Newton (GGN) matrix of the
categorical negative log-likelihood at θ*. θ = [W | b] is the weight matrix ``[C, D]`` with the bias as an
extra column (the features φ(x) augmented with a 1), flattened row-major: index ``c * D' + d`` with D' = D + 1
(D without a bias). With f = W̃ φ̃ the logits and p = softmax(f), one example contributes

    G_n = J_nᵀ Λ_n J_n = Λ_n ⊗ φ̃_n φ̃_nᵀ,    Λ_n = diag(p_n) − p_n p_nᵀ,    J_n = I_C ⊗ φ̃_nᵀ

(for the last layer the logits are linear in θ, so the GGN equals the Hessian of the NLL). Three structures:

* ``"full"``: G = Σ_n Λ_n ⊗ φ̃_n φ̃_nᵀ exactly (P² memory, O(P³) time: at most :data:`FULL_MAX_PARAMS`);
* ``"diag"``: its diagonal, G_(c,d),(c,d) = Σ_n (p_nc − p_nc²) φ̃_nd²;
* ``"kron"``: KFAC (Martens & Grosse 2015; Ritter et al. 2018), the two factors' expectations taken separately,
  G ≈ N · E[Λ] ⊗ E[φ̃ φ̃ᵀ] = (Σ_n Λ_n) ⊗ ((1/N) Σ_n φ̃_n φ̃_nᵀ) — exact when N = 1 or when every example has the
  same features. The output factor A = Σ_n Λ_n (C x C) carries the data-set size, the input factor
  B = (1/N) Σ_n φ̃_n φ̃_nᵀ (D' x D') is a mean, as in laplace-torch.

Prior precision (MacKay 1992; Immer et al. 2021): ``prior_precision="marglik"`` maximises the Laplace
approximation of the log marginal likelihood over δ,

    log p(D | δ) ≈ log p(D | θ*) − ½ δ ‖θ*‖² + ½ P log δ − ½ log det(G + δ I),

computed exactly for each structure from the eigenvalues g_k of G (kron: the products λ_i μ_j of the two
factors' eigenvalues, since A ⊗ B + δ I = (Q_A ⊗ Q_B)(Λ_A ⊗ Λ_B + δ)(Q_A ⊗ Q_B)ᵀ). Its derivative in log δ is
½ (Σ_k g_k / (g_k + δ) − δ ‖θ*‖²), strictly decreasing, so the maximiser is the unique root of MacKay's
fixed-point condition δ = γ / ‖θ*‖² (γ the effective number of parameters); it is found by bisection on log δ
(to machine precision, where laplace-torch runs 100 Adam steps on log δ from δ = 1).

Predictive (:attr:`LastLayerLaplace.predictive`):

* ``"mc"``: S draws θ_s ~ N(θ*, Σ) and their logits f_s = W̃_s φ̃(x), ``[S, B, C]``; draws use the eigen-
  decomposition of the precision (diag: elementwise; kron: Σ^{1/2} = (Q_A ⊗ Q_B)(Λ_A ⊗ Λ_B + δ)^{-1/2}, i.e.
  ΔW = Q_A (E ⊙ (λ μᵀ + δ)^{-1/2}) Q_Bᵀ; full: V (g + δ)^{-1/2} ε), which is a valid square root of Σ like a
  Cholesky factor, and lets δ change without refactorising;
* ``"probit"``: the deterministic probit approximation (MacKay 1992; its multi-class form, Daxberger et al. 2021,
  laplace-torch's ``link_approx="probit"``): p(y | x) ≈ softmax(f* / sqrt(1 + π/8 · Var f)), with
  Var f_c = φ̃ᵀ Σ_cc φ̃ the diagonal of J Σ Jᵀ. It is returned as **one** "draw" whose logits are the log of those
  probabilities (:attr:`~bbh.posteriors.protocol.Method.fixed_draws` = 1), so everything built on
  ``sample_outputs`` (``predict``, ``bbh.evaluate``, FGSM) uses it unchanged; being a single draw it has no
  epistemic / aleatoric split (mutual information 0, ``samples`` = 1 in evaluation results). It uses the logits'
  marginal variances only and ignores their correlations. Those are strong for kron and full: the GGN is flat
  along adding the same vector to every class's weights (Λ_n 1 = 0: softmax ignores a common shift), so only δ
  bounds the posterior there and the logits move together; the probit predictive is then markedly less
  confident than the MC one, as in laplace-torch. A diag posterior has independent logits.

Both predictives are differentiable with respect to x (attacks differentiate them). Only the categorical
likelihood (classification) is supported: a regression likelihood is refused with a ``ValueError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.elbo import LossTerms
from ..core.functional import chunk_sizes
from ..core.likelihoods import Categorical, Likelihood
from ..core.options import LaplacePredictive, LaplaceStructure, check_float, check_int, choices, parse_option
from ..data.batches import as_batches
from .point import MAP
from .protocol import Method

STRUCTURES = choices(LaplaceStructure)
PREDICTIVES = choices(LaplacePredictive)
FULL_MAX_PARAMS = 10_000
"""The largest last layer (weights + bias) the ``"full"`` structure accepts: its P x P float64 GGN takes
P² · 8 bytes (800 MB at the limit) and its eigendecomposition O(P³) time."""
PRIOR_PRECISION_BOUNDS = (1e-8, 1e8)
"""The interval the marginal-likelihood search keeps δ in."""
_STRUCTURE_CODES = {name: i for i, name in enumerate(STRUCTURES)}


# ---------------------------------------------------------------------------------------------- helpers
def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` of ``model`` in module order, ``(name, layer)``: the layer that must produce the
    logits.

    Raises:
        ValueError: the model has no ``nn.Linear`` layer.
    """
    found = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: a last-layer Laplace approximation "
                         f"needs the logits to be produced by a final nn.Linear")
    return found[-1]


def _check_categorical(likelihood: Likelihood, what: str) -> None:
    if getattr(likelihood, "is_regression", False) or not isinstance(likelihood, Categorical):
        raise ValueError(f"last-layer Laplace supports classification (the categorical likelihood) only; "
                         f"{what} has the likelihood {likelihood!r}")


def _sym_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (clamped at 0: the GGN is positive semi-definite up to rounding) and eigenvectors."""
    values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    return values.clamp_min(0.0), vectors


# ---------------------------------------------------------------------------------------------- the method
class LastLayerLaplace(Method):
    """A Gaussian posterior N(θ*, (G + δ I)⁻¹) over the last ``nn.Linear`` of a trained classifier (module
    docstring for the formulas). Build and fit one with :func:`fit_last_layer_laplace`; a new instance on the
    same architecture is unfitted until it :meth:`fit`s or loads a fitted one's ``state_dict``.

    The network is shared, not copied: θ* is read from the model's last layer at every prediction, so training
    the model further invalidates the fit. The state (``state_dict``) holds the network (θ* included), the GGN
    of the chosen structure (``ggn_full`` / ``ggn_diag`` / ``kron_out`` and ``kron_in``), δ (``delta``), the
    data-set size (``num_data``) and log p(D | θ*) (``map_log_likelihood``); the predictive is an option, not
    state (load a fit and predict with either).

    Not trainable: :meth:`loss` raises ``RuntimeError`` (train the MAP, then fit this), and
    :meth:`trainable_parameters` is empty.

    Args:
        model: the trained classifier; its last ``nn.Linear`` (module order) must produce the logits ``[B, C]``.
        likelihood: must be ``"categorical"`` (a regression likelihood raises ``ValueError``).
        structure: ``"kron"``, ``"diag"`` or ``"full"`` (at most :data:`FULL_MAX_PARAMS` parameters).
        predictive: ``"mc"`` (weight draws) or ``"probit"`` (one deterministic draw).
        n_samples_default: draws used when ``sample_outputs`` / ``predict`` get ``n_samples=None``.

    Attributes:
        structure, predictive, n_params, prior_precision (δ), num_data, layer_name.
    """

    name = "laplace"

    def __init__(self, model: nn.Module, likelihood: Likelihood | str = "categorical", *, structure: str = "kron",
                 predictive: str = "mc", n_samples_default: int = 100) -> None:
        super().__init__(model, likelihood)
        _check_categorical(self.likelihood, "this method")
        self.structure = parse_option(LaplaceStructure, structure, "structure").value
        self.layer_name, layer = last_linear(model)
        self.num_classes, self.in_features = int(layer.out_features), int(layer.in_features)
        self.has_bias = layer.bias is not None
        self.width = self.in_features + int(self.has_bias)  # D'
        if self.structure == "full" and self.n_params > FULL_MAX_PARAMS:
            raise ValueError(f"structure='full' stores a P x P matrix; the last layer `{self.layer_name}` has "
                             f"P = {self.n_params} parameters, above the limit of {FULL_MAX_PARAMS}: use "
                             f"structure='kron' or 'diag'")
        self.predictive = predictive
        self.n_samples_default = check_int("n_samples_default", n_samples_default, 1)
        self._cache: dict[str, Any] = {}
        kw = dict(dtype=torch.float64, device=layer.weight.device)
        c, w = self.num_classes, self.width
        self.register_buffer("structure_code", torch.tensor(_STRUCTURE_CODES[self.structure]))
        self.register_buffer("delta", torch.tensor(1.0, **kw))
        self.register_buffer("num_data", torch.tensor(0.0, **kw))
        self.register_buffer("map_log_likelihood", torch.tensor(0.0, **kw))
        if self.structure == "full":
            self.register_buffer("ggn_full", torch.zeros(c * w, c * w, **kw))
        elif self.structure == "diag":
            self.register_buffer("ggn_diag", torch.zeros(c, w, **kw))
        else:
            self.register_buffer("kron_out", torch.zeros(c, c, **kw))
            self.register_buffer("kron_in", torch.zeros(w, w, **kw))

    # ---- options and attributes ---------------------------------------------------------------------------
    @property
    def predictive(self) -> str:
        """``"mc"`` (S weight draws) or ``"probit"`` (one deterministic draw: :attr:`fixed_draws` = 1)."""
        return self._predictive

    @predictive.setter
    def predictive(self, value: str) -> None:
        self._predictive = parse_option(LaplacePredictive, value, "predictive").value
        self.fixed_draws = 1 if value == "probit" else None

    @property
    def n_params(self) -> int:
        """P = C · D' (weights and bias of the last layer)."""
        return self.num_classes * self.width

    @property
    def prior_precision(self) -> float:
        """δ, the precision of the isotropic Gaussian prior N(0, δ⁻¹ I) on the last layer."""
        return float(self.delta)

    @prior_precision.setter
    def prior_precision(self, value: float) -> None:
        delta = check_float("prior_precision", value, 0.0, open_low=True)
        self.delta.fill_(delta)
        self._cache.pop("posterior", None)

    @property
    def fitted(self) -> bool:
        """Whether the GGN has been computed (by :meth:`fit` or a loaded state)."""
        return float(self.num_data) > 0

    def _layer(self) -> nn.Linear:
        return self.model.get_submodule(self.layer_name)  # type: ignore[return-value]

    def map_parameters(self) -> Tensor:
        """θ* = [W | b], ``[C, D']``, detached, as the model's last layer holds it now."""
        layer = self._layer()
        weight = layer.weight.detach()
        return torch.cat([weight, layer.bias.detach()[:, None]], 1) if self.has_bias else weight

    # ---- features ------------------------------------------------------------------------------------------
    @contextmanager
    def _capture(self) -> Iterator[list[tuple[Tensor, Tensor]]]:
        """Record ``(input, output)`` of every call of the last layer during the block."""
        seen: list[tuple[Tensor, Tensor]] = []

        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            seen.append((args[0], output))

        handle = self._layer().register_forward_hook(hook)
        try:
            yield seen
        finally:
            handle.remove()

    def _augment(self, phi: Tensor) -> Tensor:
        return torch.cat([phi, phi.new_ones(*phi.shape[:-1], 1)], -1) if self.has_bias else phi

    def features(self, x: Tensor, *, check: bool = False) -> tuple[Tensor, Tensor]:
        """``(φ̃(x) [B, D'], logits [B, C])``: the last layer's (bias-augmented) input and the model's output,
        differentiable with respect to x.

        Raises:
            ValueError (with ``check``): the last layer runs other than once, on other than ``[B, D]`` inputs, or
                its output is not the model's output.
        """
        with self._capture() as seen:
            out = self.model(x)
        if check:
            self._check_capture(seen, out)
        phi, _ = seen[-1]
        return self._augment(phi), out

    def _check_capture(self, seen: list[tuple[Tensor, Tensor]], out: Any) -> None:
        where = f"the last nn.Linear `{self.layer_name}` of {type(self.model).__name__}"
        if len(seen) != 1:
            raise ValueError(f"{where} ran {len(seen)} times in one forward pass; last-layer Laplace needs it to "
                             f"run exactly once, producing the logits")
        phi, lin_out = seen[0]
        if phi.dim() != 2:
            raise ValueError(f"{where} received an input of shape {list(phi.shape)}; last-layer Laplace needs "
                             f"features [B, {self.in_features}] (one feature vector per example)")
        if not isinstance(out, Tensor) or out.shape != lin_out.shape or not torch.equal(out, lin_out):
            raise ValueError(f"{where} does not produce the model's outputs (the model transforms them after it, "
                             f"or returns something else): last-layer Laplace needs the logits to be that layer's "
                             f"output")

    # ---- fitting -------------------------------------------------------------------------------------------
    def fit(self, data: Any, *, prior_precision: float | str = "marglik", num_data: int | None = None,
            batch_size: int = 512) -> LastLayerLaplace:
        """Compute the GGN of the structure over ``data`` at θ*, then set δ (a number, or ``"marglik"``).

        Args:
            data: an ``(x, y)`` pair of tensors or an iterable of ``(x, y, ...)`` batches (a DataLoader); inputs
                and labels are checked as for training (:meth:`check_inputs`).
            prior_precision: δ > 0, or ``"marglik"`` (:meth:`optimize_prior_precision`).
            num_data: N, the training-set size, when ``data`` is a subset of it: the GGN and log p(D | θ*) are
                scaled by N / (examples seen). None: the examples seen.
            batch_size: examples per forward pass for an ``(x, y)`` pair.

        Raises:
            ValueError: bad data (shapes, labels, NaN), no examples, a model whose last layer does not produce
                its logits, bad ``prior_precision`` / ``num_data``.
        """
        batch_size = check_int("batch_size", batch_size, 1)
        if num_data is not None:
            num_data = check_int("num_data", num_data, 1)
        marglik = isinstance(prior_precision, str) and prior_precision == "marglik"
        if not marglik and (isinstance(prior_precision, (str, bool)) or not isinstance(prior_precision, (int, float))):
            raise ValueError(f"prior_precision must be a number > 0 or 'marglik', got {prior_precision!r}")
        if not marglik:
            check_float("prior_precision", prior_precision, 0.0, open_low=True)
        acc = _GGNAccumulator(self.structure, self.num_classes, self.width, self.delta.device)
        device = self.delta.device
        with self.evaluating(), torch.no_grad():
            for x, y in as_batches(data, batch_size, labels=True):
                x, y = x.to(device), y.to(device)
                self.check_inputs(x, y)
                phi, logits = self.features(x, check=True)
                acc.add(phi.double(), logits.double(), y)
        if acc.count == 0:
            raise ValueError("data holds no examples: the Laplace approximation needs the training data")
        scale = 1.0 if num_data is None else num_data / acc.count
        self.num_data.fill_(acc.count * scale)
        self.map_log_likelihood.fill_(acc.log_lik * scale)
        for name, value in acc.result(scale).items():
            getattr(self, name).copy_(value)
        self._cache.clear()
        if marglik:
            self.optimize_prior_precision()
        else:
            self.prior_precision = float(prior_precision)
        return self

    def _require_fit(self) -> None:
        if not self.fitted:
            raise RuntimeError("this LastLayerLaplace is not fitted: call fit(data) (or fit_last_layer_laplace) or "
                               "load the state_dict of a fitted one")

    # ---- the GGN's eigendecomposition (cached until the next fit / load / move) -----------------------------
    def _eig(self) -> tuple[Tensor, ...]:
        """diag: (g [C, D'],); kron: (λ [C], Q_A, μ [D'], Q_B); full: (g [P], V [P, P])."""
        if "eig" not in self._cache:
            if self.structure == "diag":
                self._cache["eig"] = (self.ggn_diag.double().clamp_min(0.0),)
            elif self.structure == "kron":
                self._cache["eig"] = (*_sym_eigh(self.kron_out.double()), *_sym_eigh(self.kron_in.double()))
            else:
                self._cache["eig"] = _sym_eigh(self.ggn_full.double())
        return self._cache["eig"]

    def _posterior(self) -> _GaussianPosterior:
        """The Gaussian of the current GGN and δ (cached until the next fit / load / move / change of δ)."""
        if "posterior" not in self._cache:
            self._cache["posterior"] = _GaussianPosterior(self.structure, self._eig(), self.delta.double(),
                                                          self.num_classes, self.width)
        return self._cache["posterior"]

    def ggn_eigenvalues(self) -> Tensor:
        """The P eigenvalues of the structure's GGN, ``[P]`` (kron: all products λ_i μ_j)."""
        self._require_fit()
        return self._posterior().eigenvalues()

    def _check_dense(self) -> None:
        self._require_fit()
        if self.n_params > FULL_MAX_PARAMS:
            raise ValueError(f"a dense {self.n_params} x {self.n_params} matrix is above the limit of "
                             f"{FULL_MAX_PARAMS} parameters")

    def ggn_matrix(self) -> Tensor:
        """The structure's GGN as a dense ``[P, P]`` float64 matrix (row-major [C, D'] order; small layers)."""
        self._check_dense()
        if self.structure == "full":
            return self.ggn_full.double().clone()
        if self.structure == "diag":
            return torch.diag(self.ggn_diag.double().flatten())
        return torch.kron(self.kron_out.double(), self.kron_in.double())

    def posterior_covariance(self) -> Tensor:
        """Σ = (G + δ I)⁻¹ as a dense ``[P, P]`` float64 matrix (row-major [C, D'] order; small layers)."""
        self._check_dense()
        return self._posterior().covariance()

    # ---- marginal likelihood ----------------------------------------------------------------------------
    def log_marginal_likelihood(self, prior_precision: float | Tensor | None = None) -> Tensor:
        """log p(D | δ) ≈ log p(D | θ*) − ½ δ ‖θ*‖² + ½ P log δ − ½ Σ_k log(g_k + δ) (module docstring), a 0-d
        float64 tensor; differentiable in ``prior_precision`` when it is a tensor that requires grad.

        Args:
            prior_precision: δ > 0 (None: the current :attr:`prior_precision`).
        """
        self._require_fit()
        if prior_precision is None:
            delta = self.delta.double()
        elif isinstance(prior_precision, Tensor):
            delta = prior_precision.to(self.delta.device, torch.float64).reshape(())
            if not bool(delta > 0):
                raise ValueError(f"prior_precision must be > 0, got {float(delta)}")
        else:
            delta = self.delta.new_tensor(check_float("prior_precision", prior_precision, 0.0, open_low=True))
        theta_sq = self.map_parameters().double().square().sum()
        log_det = torch.log(self.ggn_eigenvalues() + delta).sum()
        return (self.map_log_likelihood.double() - 0.5 * delta * theta_sq + 0.5 * self.n_params * torch.log(delta)
                - 0.5 * log_det)

    def optimize_prior_precision(self) -> float:
        """Set δ to the maximiser of :meth:`log_marginal_likelihood` and return it.

        d/d log δ of the log marginal likelihood is ½ (Σ_k g_k / (g_k + δ) − δ ‖θ*‖²), strictly decreasing in δ:
        its root (MacKay's δ = γ / ‖θ*‖²) is found by bisection on log δ within :data:`PRIOR_PRECISION_BOUNDS`
        (a ``RuntimeWarning`` when the maximum lies at a bound).
        """
        self._require_fit()
        g = self.ggn_eigenvalues()
        theta_sq = float(self.map_parameters().double().square().sum())

        def slope(log_delta: float) -> float:
            delta = math.exp(log_delta)
            return float((g / (g + delta)).sum()) - delta * theta_sq

        low, high = (math.log(b) for b in PRIOR_PRECISION_BOUNDS)
        if slope(high) >= 0 or slope(low) <= 0:
            best = high if slope(high) >= 0 else low
            warnings.warn(f"the Laplace marginal likelihood is maximised at the bound δ = {math.exp(best):g} of "
                          f"the search interval {PRIOR_PRECISION_BOUNDS}", RuntimeWarning, stacklevel=2)
        else:
            for _ in range(200):
                mid = 0.5 * (low + high)
                if slope(mid) > 0:
                    low = mid
                else:
                    high = mid
                if high - low < 1e-12:
                    break
            best = 0.5 * (low + high)
        self.prior_precision = math.exp(best)
        return self.prior_precision

    # ---- the posterior ----------------------------------------------------------------------------------
    def sample_parameters(self, n: int) -> Tensor:
        """n draws θ_s ~ N(θ*, Σ), ``[n, C, D']`` float64 (the bias in the last column)."""
        self._require_fit()
        n = check_int("n", n, 1)
        eps = torch.randn(n, self.num_classes, self.width, dtype=torch.float64, device=self.delta.device)
        return self.map_parameters().double() + self._posterior().step(eps)

    def weight_samples(self, n: int) -> dict[str, Tensor]:
        """n draws of the last layer's posterior ``{"<layer>.weight": [n, C, D], "<layer>.bias": [n, C]}``."""
        theta = self.sample_parameters(n).to(self._layer().weight.dtype)
        prefix = f"{self.layer_name}." if self.layer_name else ""
        out = {f"{prefix}weight": theta[..., :self.in_features]}
        if self.has_bias:
            out[f"{prefix}bias"] = theta[..., -1]
        return out

    def logit_variance(self, x: Tensor) -> Tensor:
        """Var f_c(x) = φ̃ᵀ Σ_cc φ̃, the diagonal of J Σ Jᵀ, ``[B, C]`` (float64, differentiable in x)."""
        self.check_inputs(x)
        self._require_fit()
        phi, _ = self.features(x)
        return self._variance(phi.double())

    def _variance(self, phi: Tensor) -> Tensor:
        return self._posterior().logit_variance(phi)

    def _probit_logits(self, phi: Tensor) -> Tensor:
        """log softmax(f* / sqrt(1 + π/8 Var f)), ``[B, C]`` in φ's dtype."""
        mean = phi.double() @ self.map_parameters().double().T
        kappa = torch.rsqrt(1.0 + math.pi / 8.0 * self._variance(phi.double()))
        return F.log_softmax(kappa * mean, dim=-1).to(phi.dtype)

    def _logits(self, phi: Tensor, theta: Tensor) -> Tensor:
        """f_s = W̃_s φ̃: ``phi [B, D']`` or ``[S, B, D']``, ``theta [S, C, D']`` -> ``[S, B, C]``."""
        theta = theta.to(phi.dtype)
        if phi.dim() == 2:
            return torch.einsum("bd,scd->sbc", phi, theta)
        return torch.einsum("sbd,scd->sbc", phi, theta)

    # ---- the Method protocol ----------------------------------------------------------------------------
    def sample_outputs(self, x: Tensor, n_samples: int | None = None, *, chunk_size: int | None = None) -> Tensor:
        """Logits ``[S, B, C]`` (module docstring): S = ``n_samples`` (None: :attr:`n_samples_default`) weight
        draws for ``"mc"``, one deterministic draw for ``"probit"``."""
        n = self.n_samples_default if n_samples is None else n_samples
        return super().sample_outputs(x, n, chunk_size=chunk_size)

    def predict(self, x: Tensor, n_samples: int | None = None, *, chunk_size: int | None = None) -> Any:
        """:meth:`bbh.Method.predict` with ``n_samples=None`` meaning :attr:`n_samples_default`."""
        n = self.n_samples_default if n_samples is None else n_samples
        return super().predict(x, n, chunk_size=chunk_size)

    def _sample_outputs(self, x: Tensor, n_samples: int | None, *, chunk_size: int | None = None) -> Tensor:
        self._require_fit()
        phi, _ = self.features(x)
        if self.predictive == "probit":
            return self._probit_logits(phi).unsqueeze(0)
        with torch.no_grad():
            thetas = [self.sample_parameters(k) for k in chunk_sizes(int(n_samples or 1), chunk_size)]
        return torch.cat([self._logits(phi, theta) for theta in thetas])

    def _per_copy_outputs(self, xs: Tensor) -> Tensor:
        """S fresh draws, draw s on ``xs[s]`` only: one forward pass of the feature network on S·B examples
        (probit: its single draw on ``xs[0]``)."""
        self._require_fit()
        if self.predictive == "probit":
            return self._probit_logits(self.features(xs[0])[0]).unsqueeze(0)
        s, b = xs.shape[:2]
        phi = self.features(xs.flatten(0, 1))[0].reshape(s, b, -1)
        with torch.no_grad():
            theta = self.sample_parameters(s)
        return self._logits(phi, theta)

    def _loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        """Raises ``RuntimeError``: a Laplace approximation is fitted around a trained network, not trained."""
        raise RuntimeError("LastLayerLaplace is a post-hoc approximation and is not trained: train the network "
                           "(e.g. bbh.create('map', model)), then call fit_last_layer_laplace(map_method, data)")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """None: nothing of a Laplace approximation is trained."""
        return []

    # ---- state -----------------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        code = state_dict.get(prefix + "structure_code")
        if isinstance(code, Tensor) and int(code) != _STRUCTURE_CODES[self.structure]:
            raise ValueError(f"the state is of a structure={STRUCTURES[int(code)]!r} Laplace approximation; this "
                             f"one has structure={self.structure!r}: build it with the same structure")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._cache.clear()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> LastLayerLaplace:
        out = super()._apply(fn, *args, **kwargs)
        self._cache.clear()
        return out

    def extra_repr(self) -> str:
        return (f"structure={self.structure!r}, predictive={self.predictive!r}, layer={self.layer_name!r}, "
                f"n_params={self.n_params}, prior_precision={self.prior_precision:.4g}")


class _GaussianPosterior:
    """N(θ*, (G + δ I)⁻¹) over the last layer's P = C · D' parameters in one GGN structure, from the GGN's
    eigendecomposition: its spectrum, dense covariance, draws and the logit variances it implies.

    ``eig``: diag ``(g [C, D'],)``; kron ``(λ [C], Q_A [C, C], μ [D'], Q_B [D', D'])`` with G = A ⊗ B; full
    ``(g [P], V [P, P])``. ``delta``: δ, a 0-d float64 tensor.
    """

    def __init__(self, structure: str, eig: tuple[Tensor, ...], delta: Tensor, classes: int, width: int) -> None:
        self.structure, self.eig, self.delta, self.classes, self.width = structure, eig, delta, classes, width
        self._blocks: Tensor | None = None  # full: Σ_cc, [C, D', D']

    def eigenvalues(self) -> Tensor:
        """The P eigenvalues of G, ``[P]`` (kron: all products λ_i μ_j)."""
        if self.structure == "kron":
            return torch.outer(self.eig[0], self.eig[2]).flatten()
        return self.eig[0].flatten()

    def covariance(self) -> Tensor:
        """Σ = (G + δ I)⁻¹, dense ``[P, P]`` (row-major [C, D'] order)."""
        if self.structure == "diag":
            return torch.diag(1.0 / (self.eig[0].flatten() + self.delta))
        if self.structure == "kron":
            lam, qa, mu, qb = self.eig
            q = torch.kron(qa, qb)
            return q @ torch.diag(1.0 / (torch.outer(lam, mu).flatten() + self.delta)) @ q.T
        g, v = self.eig
        return v @ torch.diag(1.0 / (g + self.delta)) @ v.T

    def step(self, eps: Tensor) -> Tensor:
        """Σ^½ ε for standard normal ``eps [n, C, D']``: a draw minus the mean, ``[n, C, D']``."""
        delta = self.delta
        if self.structure == "diag":
            return eps * (self.eig[0] + delta).rsqrt()
        if self.structure == "kron":
            lam, qa, mu, qb = self.eig
            return qa @ (eps * (torch.outer(lam, mu) + delta).rsqrt()) @ qb.T
        g, v = self.eig
        n = eps.shape[0]
        return ((eps.reshape(n, -1) * (g + delta).rsqrt()) @ v.T).reshape(n, self.classes, self.width)

    def logit_variance(self, phi: Tensor) -> Tensor:
        """Var f_c(x) = φ̃ᵀ Σ_cc φ̃ for features ``phi [B, D']`` (float64), ``[B, C]``."""
        delta = self.delta
        if self.structure == "diag":
            return phi.square() @ (1.0 / (self.eig[0] + delta)).T
        if self.structure == "kron":
            lam, qa, mu, qb = self.eig
            psi_sq = (phi @ qb).square()  # [B, D'] in the input factor's eigenbasis
            return psi_sq @ (1.0 / (torch.outer(lam, mu) + delta)).T @ qa.square().T
        if self._blocks is None:
            g, v = self.eig
            vc = v.reshape(self.classes, self.width, -1)
            self._blocks = torch.einsum("cdk,k,cek->cde", vc, 1.0 / (g + delta), vc)
        return torch.einsum("bd,cde,be->bc", phi, self._blocks, phi)


class _GGNAccumulator:
    """Sums over batches of the quantities each structure needs (float64), and log p(D | θ*)."""

    def __init__(self, structure: str, classes: int, width: int, device: torch.device) -> None:
        self.structure, self.classes, self.width = structure, classes, width
        kw = dict(dtype=torch.float64, device=device)
        self.count, self.log_lik = 0, 0.0
        if structure == "full":
            self.full = torch.zeros(classes * width, classes * width, **kw)
        elif structure == "diag":
            self.diag = torch.zeros(classes, width, **kw)
        else:
            self.out_sum = torch.zeros(classes, classes, **kw)
            self.in_sum = torch.zeros(width, width, **kw)

    def add(self, phi: Tensor, logits: Tensor, y: Tensor) -> None:
        """One batch: features ``[n, D']``, logits ``[n, C]``, labels ``[n]`` (all checked)."""
        p = logits.softmax(-1)
        self.count += int(phi.shape[0])
        self.log_lik += float(Categorical().log_prob(logits, y).sum())
        if self.structure == "diag":  # Σ_n (p_c − p_c²) φ_d²
            self.diag += (p - p.square()).T @ phi.square()
        elif self.structure == "kron":  # Σ_n diag(p_n) − p_n p_nᵀ  and  Σ_n φ_n φ_nᵀ
            self.out_sum += torch.diag(p.sum(0)) - p.T @ p
            self.in_sum += phi.T @ phi
        else:  # Σ_n diag(p_n) ⊗ φφᵀ − (p_n ⊗ φ_n)(p_n ⊗ φ_n)ᵀ
            u = (p[:, :, None] * phi[:, None, :]).reshape(phi.shape[0], -1)
            self.full -= u.T @ u
            idx = torch.arange(self.classes, device=phi.device)
            blocks = self.full.view(self.classes, self.width, self.classes, self.width)
            blocks[idx, :, idx, :] += torch.einsum("nc,nd,ne->cde", p, phi, phi)

    def result(self, scale: float) -> dict[str, Tensor]:
        """The buffers of the structure, the data terms scaled by ``scale`` (N / examples seen)."""
        if self.structure == "full":
            return {"ggn_full": self.full * scale}
        if self.structure == "diag":
            return {"ggn_diag": self.diag * scale}
        return {"kron_out": self.out_sum * scale, "kron_in": self.in_sum / self.count}


# ---------------------------------------------------------------------------------------------- entry point
def fit_last_layer_laplace(method_or_model: MAP | nn.Module, data: Any, *, structure: str = "kron",
                           prior_precision: float | str = "marglik", predictive: str = "mc",
                           n_samples_default: int = 100, num_data: int | None = None,
                           batch_size: int = 512) -> LastLayerLaplace:
    """Fit a last-layer Laplace approximation around a trained classifier (module docstring).

        map_method = bbh.create("map", model); bbh.Trainer(...).fit(...)
        la = fit_last_layer_laplace(map_method, (x_train, y_train), structure="kron")
        bbh.evaluate(la, test=(x_test, y_test), attacks={"fgsm": None})

    Args:
        method_or_model: a trained bbh :class:`~bbh.posteriors.point.MAP` method (its ``.model`` is used, shared)
            or a plain ``nn.Module`` classifier whose last ``nn.Linear`` (module order) produces the logits.
        data: the training data: an ``(x, y)`` pair of tensors or an iterable of ``(x, y, ...)`` batches.
        structure: ``"kron"`` (KFAC), ``"diag"`` or ``"full"`` (small layers only).
        prior_precision: δ > 0, or ``"marglik"`` to maximise the Laplace marginal likelihood.
        predictive: ``"mc"`` (weight draws) or ``"probit"`` (one deterministic draw).
        n_samples_default: draws when ``sample_outputs`` / ``predict`` get ``n_samples=None``.
        num_data: the training-set size N when ``data`` is a subset (the GGN is scaled by N / examples seen).
        batch_size: examples per forward pass for an ``(x, y)`` pair.

    Raises:
        TypeError: ``method_or_model`` is neither a MAP method nor an ``nn.Module``; ``data`` of the wrong kind.
        ValueError: a regression likelihood (only classification is supported), no ``nn.Linear`` layer, a last
            layer that does not produce the logits, bad data (shapes, labels), bad options.
    """
    if isinstance(method_or_model, Method):
        if not isinstance(method_or_model, MAP):
            raise TypeError(f"fit_last_layer_laplace needs a trained MAP method or an nn.Module; a "
                            f"{type(method_or_model).__name__} ({method_or_model.name}) holds no point estimate "
                            f"of its network")
        _check_categorical(method_or_model.likelihood, f"the {method_or_model.name!r} method")
        model, likelihood = method_or_model.model, method_or_model.likelihood
    elif isinstance(method_or_model, nn.Module):
        model, likelihood = method_or_model, "categorical"
    else:
        raise TypeError(f"method_or_model must be a bbh MAP method or a torch.nn.Module, got "
                        f"{type(method_or_model).__name__}")
    laplace = LastLayerLaplace(model, likelihood, structure=structure, predictive=predictive,
                               n_samples_default=n_samples_default)
    return laplace.fit(data, prior_precision=prior_precision, num_data=num_data, batch_size=batch_size)


__all__ = ["FULL_MAX_PARAMS", "PREDICTIVES", "PRIOR_PRECISION_BOUNDS", "STRUCTURES", "LastLayerLaplace",
           "fit_last_layer_laplace", "last_linear"]
