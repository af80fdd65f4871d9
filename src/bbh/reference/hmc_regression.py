"""HMC reference posterior of the UCI regression network: the gold standard the variational methods are read against.

:func:`hmc_regression` samples the exact posterior of the benchmark's network on one (standardised) train/test
split with :func:`bbh.reference.hmc.hmc` (Neal 2011) and returns the predictive means of the kept draws on the
test inputs, the noise variance of each draw, and convergence diagnostics (:func:`split_rhat`,
:func:`bulk_ess`).

The model (everything in the standardised units of the inputs given, float64):

* network: ``bbh.models.MLP(F, 1, hidden=(H,))``, i.e. ``f(x) = w2 . relu(W1 x + b1) + b2`` (ReLU, one hidden
  layer, ``D = H F + 2 H + 1`` weights and biases, flattened in ``named_parameters()`` order);
* prior on every weight and bias: ``N(0, prior_scale^2)`` (:class:`bbh.priors.NormalPrior`);
* likelihood: ``y_n ~ N(f(x_n), sigma^2)``, one noise level for all points;
* noise: sampled jointly with the weights as ``u = log sigma`` (the last coordinate of the HMC state) under a
  Gamma(a, b) prior (shape a, rate b) on the precision ``tau = 1 / sigma^2 = exp(-2 u)``. With the Jacobian
  ``|d tau / d u| = 2 tau`` the density of ``u`` is

      p(u) = Gamma(tau; a, b) * 2 tau = 2 b^a / Gamma(a) * tau^a * exp(-b tau),
      log p(u) = log 2 + a log b - lgamma(a) - 2 a u - b exp(-2 u).

  The default ``(a, b) = (1, 0.01)`` is weak: in the conjugate update of tau it acts like ``2 a = 2`` extra
  observations with a summed squared residual of ``2 b = 0.02`` (the standardised targets have variance 1;
  boston's training set contributes 455 observations with a summed squared residual around 15).
  Probabilistic backpropagation's ``(6, 6)`` (Hernandez-Lobato & Adams 2015) is 12 pseudo-observations with
  squared residual 1 each, which inflates sigma noticeably on the low-noise datasets (energy, naval); pass
  ``noise_prior=(6.0, 6.0)`` to use it.

The log posterior is ``sum_n log N(y_n; f(x_n), e^{2u}) + sum_i log N(w_i; 0, s^2) + log p(u)``.

Sampler, per chain (chains run one after the other, each with its own seed):

1. initialisation: the network's default (PyTorch) initialisation drawn with the chain's seed, ``u = 0``, then
   ``init_steps`` full-batch Adam steps on the negative log posterior (a short MAP fit). Different chains
   start at different local optima, which is what makes R-hat meaningful; the short fit only saves burn-in.
2. warm-up 1 (identity mass matrix): ``burn_in // 4`` iterations adapting the step size (dual averaging, to
   ``target_accept``), then ``burn_in // 4`` at the adapted step whose draws estimate the posterior standard
   deviation ``s_i`` of every coordinate (shrunk towards 1e-3 as Stan does: ``(n s^2 + 5e-3) / (n + 5)``).
3. warm-up 2 and sampling: HMC on ``z = theta / s`` (the diagonal mass matrix ``M = diag(1/s^2)``; the
   Jacobian of this linear map is a constant), ``burn_in - 2 (burn_in // 4)`` iterations re-adapting the
   step size, then ``num_samples`` iterations of which every ``thin``-th is kept. The step size is jittered
   by +-``jitter`` every iteration (Neal 2011, Sec. 5.4.2.2).

Diagnostics (Vehtari, Gelman, Simpson, Carpenter & Buerkner 2021, "Rank-normalization, folding, and
localization: an improved R-hat"; Gelman et al., BDA3, Sec. 11.4-11.5): split R-hat and bulk effective sample
size of the test predictions ``f(x_test)`` (one number per test point: max R-hat, min / median ESS reported)
and of ``log sigma``.

Defaults and cost (measured on boston split 0, 455 x 13, 752 sampled coordinates, 1 thread on a shared 2-core
machine): a leapfrog step costs ~0.5 ms (float64), so the defaults (2 chains x (400 warm-up + 400 sampling)
iterations x 150 leapfrog steps, 400 kept draws) take ~2 minutes. Long trajectories matter more than many
iterations: at equal cost, 50 leapfrog steps per iteration gave a max R-hat of f(x_test) of ~1.5, 150 or 300
gave ~1.2. The posterior of this network is multimodal in function space and the chains do not fully mix in
minutes: at the defaults the median R-hat over test points is ~1.02 but a few points stay above 1.1, and the
test log-likelihood of each chain alone differs by up to ~0.1 nats (:meth:`HMCRegressionResult.test_metrics`
reports it per chain). Larger datasets (concrete, 927 rows) are further from convergence at the same settings.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.functional import forward_samples
from ..core.predictive import RegressionPredictive
from ..core.priors import NormalPrior
from ..core.threads import thread_count
from ..models import MLP
from .hmc import hmc

# --------------------------------------------------------------------------------------------------------
# convergence diagnostics


def _as_chains(draws: Tensor) -> Tensor:
    if draws.dim() < 2:
        raise ValueError(f"draws must be [chains, draws_per_chain, ...], got shape {tuple(draws.shape)}")
    if draws.shape[1] < 4:
        raise ValueError(f"need at least 4 draws per chain, got {draws.shape[1]}")
    return draws.double().reshape(draws.shape[0], draws.shape[1], -1)


def _split(chains: Tensor) -> Tensor:
    """``[M, N, P]`` -> ``[2M, N // 2, P]``: each chain cut into its first and second half (odd N: middle draw
    dropped), so that a chain which drifts disagrees with itself."""
    half = chains.shape[1] // 2
    return torch.cat([chains[:, :half], chains[:, chains.shape[1] - half:]], dim=0)


def _rhat(chains: Tensor) -> Tensor:
    """Classic R-hat of ``[M, N, P]`` (no splitting here), ``[P]``; nan where every draw is equal."""
    n = chains.shape[1]
    means = chains.mean(1)  # [M, P]
    w = chains.var(1, correction=1).mean(0)  # within-chain variance W
    b_over_n = means.var(0, correction=1) if chains.shape[0] > 1 else torch.zeros_like(w)  # B / N
    var_plus = (n - 1) / n * w + b_over_n
    out = (var_plus / w).sqrt()
    return torch.where(w > 0, out, torch.full_like(out, math.nan))


def _rank_normalise(chains: Tensor) -> Tensor:
    """Normal scores of the pooled ranks: ``z = Phi^-1((r - 3/8) / (S + 1/4))`` with average ranks for ties
    (Vehtari et al. 2021, Eq. 14), same shape ``[M, N, P]``."""
    m, n, p = chains.shape
    flat = chains.reshape(m * n, p)
    s = m * n
    sorted_vals, order = torch.sort(flat, dim=0, stable=True)
    ranks = torch.empty_like(flat)
    for j in range(p):  # average rank over each run of equal values
        _, counts = torch.unique_consecutive(sorted_vals[:, j], return_counts=True)
        ends = counts.cumsum(0).to(flat.dtype)
        avg = ends - (counts.to(flat.dtype) - 1) / 2
        ranks[order[:, j], j] = torch.repeat_interleave(avg, counts)
    z = torch.special.ndtri((ranks - 0.375) / (s + 0.25))
    return z.reshape(m, n, p)


def split_rhat(draws: Tensor, *, rank_normalised: bool = True) -> Tensor:
    """Split R-hat (potential scale reduction) of each quantity in ``draws [M chains, N draws, *shape]``.

    Each chain is split into two halves, giving ``M' = 2M`` chains of ``n = N // 2`` draws ``theta_{m,i}``;
    with chain means ``theta_m``, the grand mean ``theta..`` and chain variances ``s_m^2``

        W = (1/M') sum_m s_m^2,   B = n / (M' - 1) sum_m (theta_m - theta..)^2,
        var+ = (n - 1) / n W + B / n,   R-hat = sqrt(var+ / W)

    (Gelman et al., BDA3, Eq. 11.3-11.4). It is ~1 for chains sampling the same distribution and > 1 when the
    chains (or a chain's two halves) disagree; 1.01 (Vehtari et al. 2021) or, more leniently, 1.1 are the usual
    thresholds. ``rank_normalised=True`` (default) returns Vehtari et al.'s (2021) version: the maximum of the
    split R-hat of the rank-normalised draws (:func:`_rank_normalise`, "bulk") and of the rank-normalised
    folded draws ``|theta - median|`` ("tail"), which also works for heavy tails and detects chains that
    differ in scale only. A quantity whose draws are all equal gets nan.

    Returns:
        ``[*shape]`` (float64).
    """
    chains = _as_chains(draws)
    shape = draws.shape[2:]
    if not rank_normalised:
        return _rhat(_split(chains)).reshape(shape)
    bulk = _rhat(_split(_rank_normalise(chains)))
    folded = (chains - chains.reshape(-1, chains.shape[2]).median(0).values).abs()
    tail = _rhat(_split(_rank_normalise(folded)))
    return torch.maximum(bulk, tail).reshape(shape)


def _ess(chains: Tensor) -> Tensor:
    """Multi-chain effective sample size of ``[M, N, P]`` (Vehtari et al. 2021, Sec. 3.2; Stan's estimator)."""
    m, n, p = chains.shape
    z = chains - chains.mean(1, keepdim=True)
    size = 1 << (2 * n - 1).bit_length()
    spec = torch.fft.rfft(z, n=size, dim=1)
    acov = torch.fft.irfft(spec * spec.conj(), n=size, dim=1)[:, :n] / n  # biased autocovariances [M, N, P]
    w = (acov[:, 0] * n / (n - 1)).mean(0)  # W
    b_over_n = chains.mean(1).var(0, correction=1) if m > 1 else torch.zeros_like(w)
    var_plus = (n - 1) / n * w + b_over_n
    rho = 1 - (w - acov.mean(0)) / var_plus  # [N, P] combined autocorrelations
    rho[0] = 1.0  # by definition (as Stan)
    k = n // 2
    pairs = rho[0:2 * k:2] + rho[1:2 * k:2]  # P_t = rho_2t + rho_2t+1  [k, P]
    keep = torch.cumprod((pairs > 0).to(rho.dtype), dim=0)  # Geyer's initial positive sequence
    mono = torch.cummin(pairs, dim=0).values  # ... made monotone
    tau = (-1 + 2 * (mono * keep).sum(0)).clamp_min(1.0 / math.log10(m * n))
    ess = m * n / tau  # at most M N log10(M N), as Stan caps antithetic chains
    return torch.where(w > 0, ess, torch.full_like(ess, math.nan))


def bulk_ess(draws: Tensor) -> Tensor:
    """Bulk effective sample size of each quantity in ``draws [M chains, N draws, *shape]``.

    The draws are split into halves and rank-normalised (as in :func:`split_rhat`), then

        rho_t = 1 - (W - (1/M') sum_m acov_m(t)) / var+,     ESS = M' n / (-1 + 2 sum_{t'} P_{t'}),

    with ``acov_m(t)`` chain m's autocovariance at lag t, ``P_{t'} = rho_{2t'} + rho_{2t'+1}`` summed while
    positive and made non-increasing (Geyer's initial monotone sequence) (Vehtari et al. 2021, Eq. 10-11 and
    Sec. 3.2; BDA3 Sec. 11.5). Chains that disagree inflate ``var+`` and so lower the ESS. Capped at
    ``M' n log10(M' n)``; nan for a quantity whose draws are all equal.

    Returns:
        ``[*shape]`` (float64).
    """
    chains = _as_chains(draws)
    return _ess(_rank_normalise(_split(chains))).reshape(draws.shape[2:])


# --------------------------------------------------------------------------------------------------------
# the model


@dataclass
class HMCDiagnostics:
    """Convergence diagnostics of one :func:`hmc_regression` run.

    Per chain (lists of length ``chains``): ``acceptance`` (mean Metropolis acceptance probability of the
    sampling phase), ``burn_in_acceptance`` (of warm-up 2), ``step_size`` (the adapted step size, in the
    preconditioned coordinates), ``divergences`` (sampling-phase trajectories with a non-finite or > 1000
    energy error), ``init_log_prob`` (log posterior at the MAP start), ``chain_seconds``.

    Pooled over chains: ``rhat_f_max`` / ``rhat_f_median`` (rank-normalised split R-hat of ``f(x_test)``, the
    maximum / median over test points), ``rhat_f_above_1_1`` (the fraction of test points with R-hat > 1.1;
    the maximum alone is often one test point whose predictive is bimodal and which a chain visits only
    rarely), ``rhat_f_classic_max`` (the classic split R-hat, maximum), ``ess_f_min`` / ``ess_f_median`` (bulk
    ESS of ``f(x_test)`` over test points), ``rhat_log_sigma``, ``rhat_log_sigma_classic``, ``ess_log_sigma``,
    ``draws`` (kept draws, all chains), ``seconds`` (wall clock of the whole call).
    """

    acceptance: list[float]
    burn_in_acceptance: list[float]
    step_size: list[float]
    divergences: list[int]
    init_log_prob: list[float]
    chain_seconds: list[float]
    rhat_f_max: float
    rhat_f_median: float
    rhat_f_above_1_1: float
    rhat_f_classic_max: float
    ess_f_min: float
    ess_f_median: float
    rhat_log_sigma: float
    rhat_log_sigma_classic: float
    ess_log_sigma: float
    draws: int
    seconds: float

    @classmethod
    def pooled(cls, f_chains: Tensor, ls_chains: Tensor, *, rhat_f: Tensor, ess_f: Tensor, seconds: float,
               **per_chain: list[Any]) -> HMCDiagnostics:
        """The diagnostics of f(x_test) draws ``f_chains`` [C, K, N_test] and log σ draws ``ls_chains`` [C, K]
        (``rhat_f`` / ``ess_f``: their :func:`split_rhat` / :func:`bulk_ess`), with the per-chain lists given."""
        return cls(**per_chain,  # type: ignore[arg-type]
                   rhat_f_max=float(rhat_f.max()), rhat_f_median=float(rhat_f.median()),
                   rhat_f_above_1_1=float((rhat_f > 1.1).double().mean()),
                   rhat_f_classic_max=float(split_rhat(f_chains, rank_normalised=False).max()),
                   ess_f_min=float(ess_f.min()), ess_f_median=float(ess_f.median()),
                   rhat_log_sigma=float(split_rhat(ls_chains)),
                   rhat_log_sigma_classic=float(split_rhat(ls_chains, rank_normalised=False)),
                   ess_log_sigma=float(bulk_ess(ls_chains)), draws=int(f_chains.shape[0] * f_chains.shape[1]),
                   seconds=seconds)

    def converged(self, rhat: float = 1.1) -> bool:
        """R-hat of every test prediction and of log sigma below ``rhat``, and no divergences."""
        return self.rhat_f_max < rhat and self.rhat_log_sigma < rhat and sum(self.divergences) == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HMCRegressionResult:
    """What :func:`hmc_regression` returns (float64, standardised units of the inputs given).

    Attributes:
        sample_means: ``f_s(x_test)`` of the kept draws ``[S, N_test]``, chain after chain (``S = chains * K``).
        noise_vars: the noise variance ``sigma_s^2`` of each draw ``[S]``.
        diagnostics: :class:`HMCDiagnostics`.
        samples: the network's weights ``dict[name, Tensor[S, *shape]]`` (``MLP`` parameter names), for
            :func:`bbh.functional.forward_samples` on other inputs.
        chains: the number of chains (draw ``s`` belongs to chain ``s // (S / chains)``).
        settings: the arguments of the call.
    """

    sample_means: Tensor
    noise_vars: Tensor
    diagnostics: HMCDiagnostics
    samples: dict[str, Tensor]
    chains: int
    settings: dict[str, Any] = field(default_factory=dict)

    def predictive(self) -> RegressionPredictive:
        """The :class:`bbh.core.predictive.RegressionPredictive` of the draws on the test inputs."""
        return RegressionPredictive(self.sample_means, self.noise_vars[:, None].expand_as(self.sample_means))

    def test_metrics(self, y_test: Tensor, y_std: float | Tensor = 1.0) -> dict[str, Any]:
        """Test log-likelihood and RMSE in the original units of y (``y = y_std * y_standardised + mean``):

            test_ll = (1/N) sum_n log (1/S) sum_s N(y_n; mu_s(x_n), sigma_s^2) - log y_std,
            rmse = y_std * sqrt((1/N) sum_n (y_n - (1/S) sum_s mu_s(x_n))^2),

        with ``y_test`` standardised (as the inputs of :func:`hmc_regression` were). ``test_ll_chains`` and
        ``rmse_chains`` are the same from each chain's draws alone: their spread is a direct check of how far
        the reference number can be trusted (chains that explored different modes disagree; the pooled value
        is then usually the higher one).
        """
        y = _targets(y_test, "y_test").to(self.sample_means)
        n_test = self.sample_means.shape[1]
        if y.shape[0] != n_test:
            raise ValueError(f"y_test has {y.shape[0]} rows but the predictions are for {n_test} test points")
        scale = float(y_std)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"y_std must be finite and > 0, got {scale}")

        def score(means: Tensor, noise: Tensor) -> tuple[float, float]:
            pred = RegressionPredictive(means, noise[:, None].expand_as(means))
            ll = float(pred.log_density(y).mean()) - math.log(scale)
            return ll, float(((pred.mean - y) ** 2).mean().sqrt()) * scale

        ll, rmse = score(self.sample_means, self.noise_vars)
        per_chain = [score(m, v) for m, v in zip(self.sample_means.reshape(self.chains, -1, n_test),
                                                 self.noise_vars.reshape(self.chains, -1))]
        return {"test_ll": ll, "rmse": rmse, "test_ll_chains": [c[0] for c in per_chain],
                "rmse_chains": [c[1] for c in per_chain]}


def _targets(y: Tensor, name: str) -> Tensor:
    if not isinstance(y, Tensor) or not y.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor")
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1:
        raise ValueError(f"{name} must be [N] or [N, 1], got shape {tuple(y.shape)}")
    return y


def _check_inputs(x_train: Tensor, y_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point or x.dim() != 2:
            raise ValueError(f"{name} must be a floating-point tensor [N, F], got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    y = _targets(y_train, "y_train")
    if y.shape[0] != x_train.shape[0]:
        raise ValueError(f"x_train has {x_train.shape[0]} rows but y_train has {y.shape[0]}")
    if x_train.shape[0] < 1:
        raise ValueError("x_train has no rows")
    if x_test.shape[1] != x_train.shape[1]:
        raise ValueError(f"x_test has {x_test.shape[1]} features but x_train has {x_train.shape[1]}")
    for name, t in (("x_train", x_train), ("y_train", y), ("x_test", x_test)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} has non-finite values")
    f64 = torch.float64
    return x_train.detach().to(f64).contiguous(), y.detach().to(f64).contiguous(), x_test.detach().to(f64)


def log_posterior(x: Tensor, y: Tensor, *, hidden: int, prior_scale: float = 1.0,
                  noise_prior: tuple[float, float] = (1.0, 0.01)) -> Callable[[Tensor], Tensor]:
    """The log posterior density of ``theta = [MLP weights and biases (D), log sigma]`` (module docstring) up to
    the evidence, as a function ``Tensor[D + 1] -> scalar``: the log joint ``log p(y, theta | x)``, every
    normalising constant of the likelihood and the priors included."""
    n, f_in = x.shape
    h = int(hidden)
    a, b = (float(v) for v in noise_prior)
    scale = NormalPrior(prior_scale).scale
    d = h * f_in + 2 * h + 1
    const = (-0.5 * n * math.log(2 * math.pi) - d * (math.log(scale) + 0.5 * math.log(2 * math.pi))
             + math.log(2) + a * math.log(b) - math.lgamma(a))
    inv_var = 1.0 / scale**2
    hf = h * f_in

    def log_prob(theta: Tensor) -> Tensor:
        w, u = theta[:d], theta[d]
        w1, b1 = w[:hf].view(h, f_in), w[hf:hf + h]
        w2, b2 = w[hf + h:hf + 2 * h], w[d - 1]
        out = torch.relu(torch.addmm(b1, x, w1.T)) @ w2 + b2
        r = y - out
        tau = torch.exp(-2 * u)
        loglik = -0.5 * tau * (r @ r) - n * u
        return loglik - 0.5 * inv_var * (w @ w) - 2 * a * u - b * tau + const

    return log_prob


def _map_init(log_prob: Callable[[Tensor], Tensor], model: MLP, steps: int, lr: float, n: int) -> Tensor:
    """The model's parameters and ``u = 0`` after ``steps`` Adam steps on ``-log_prob / n`` (float64)."""
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]
                      + [torch.zeros(1, dtype=torch.float64)]).requires_grad_(True)
    if steps > 0:
        opt = torch.optim.Adam([theta], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = -log_prob(theta) / n
            loss.backward()
            opt.step()
    return theta.detach()


def _metric(draws: Tensor) -> Tensor:
    """Regularised posterior std per coordinate from warm-up draws ``[K, D]`` (Stan's shrinkage)."""
    k = draws.shape[0]
    var = draws.var(0, correction=1) if k > 1 else torch.ones(draws.shape[1], dtype=draws.dtype)
    return ((k / (k + 5.0)) * var + 1e-3 * (5.0 / (k + 5.0))).sqrt()


def hmc_regression(x_train: Tensor, y_train: Tensor, x_test: Tensor, *, hidden: int = 50,
                   prior_scale: float = 1.0, noise_prior: tuple[float, float] = (1.0, 0.01),
                   num_samples: int = 400, burn_in: int = 400, thin: int = 2, num_leapfrog: int = 150,
                   chains: int = 2, seed: int = 0, step_size: float = 1e-3, target_accept: float = 0.8,
                   jitter: float = 0.2, init_steps: int = 3000, init_lr: float = 0.01,
                   num_threads: int | None = 1) -> HMCRegressionResult:
    """HMC samples of the regression network's posterior and its predictions on ``x_test`` (module docstring).

    Args:
        x_train: ``[N, F]`` standardised inputs.
        y_train: ``[N]`` (or ``[N, 1]``) standardised targets.
        x_test: ``[N_test, F]`` inputs to predict on (standardised with the training statistics).
        hidden: hidden units H of ``MLP(F, 1, hidden=(H,))``.
        prior_scale: the std of the Normal prior on every weight and bias.
        noise_prior: ``(a, b)``, shape and rate of the Gamma prior on the noise precision ``1 / sigma^2``.
        num_samples: sampling iterations per chain (``num_samples // thin`` draws kept per chain).
        burn_in: warm-up iterations per chain (step-size and mass-matrix adaptation), >= 8.
        thin: keep every ``thin``-th sampling iteration.
        num_leapfrog: leapfrog steps per iteration.
        chains: independent chains (run one after the other; R-hat compares them), >= 1.
        seed: equal seeds give identical results (the global RNG is left untouched).
        step_size: the initial step size of the adaptation.
        target_accept: the acceptance rate the dual-averaging adaptation aims at.
        jitter: each iteration's step size is drawn from ``eps * [1 - jitter, 1 + jitter]``.
        init_steps: Adam steps of the MAP fit each chain starts from (0: start at the random initialisation).
        init_lr: its learning rate.
        num_threads: torch intra-op threads during the call (restored after); the default 1 is fastest for
            these small matrices (a leapfrog step on boston is ~0.5 ms; threads do not pay off) and does not
            oversubscribe shared cores. ``None`` leaves the setting alone.

    Raises:
        ValueError: inputs of the wrong shape or dtype, non-finite inputs, or invalid settings.
    """
    start = time.perf_counter()
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise ValueError(f"num_threads must be an int >= 1 or None, got {num_threads!r}")
    with thread_count(num_threads):
        return _hmc_regression(x_train, y_train, x_test, hidden=hidden, prior_scale=prior_scale,
                               noise_prior=noise_prior, num_samples=num_samples, burn_in=burn_in, thin=thin,
                               num_leapfrog=num_leapfrog, chains=chains, seed=seed, step_size=step_size,
                               target_accept=target_accept, jitter=jitter, init_steps=init_steps,
                               init_lr=init_lr, start=start)


def _hmc_regression(x_train: Tensor, y_train: Tensor, x_test: Tensor, *, hidden: int, prior_scale: float,
                    noise_prior: tuple[float, float], num_samples: int, burn_in: int, thin: int,
                    num_leapfrog: int, chains: int, seed: int, step_size: float, target_accept: float,
                    jitter: float, init_steps: int, init_lr: float, start: float) -> HMCRegressionResult:
    x, y, xt = _check_inputs(x_train, y_train, x_test)
    ints = dict(hidden=hidden, num_samples=num_samples, burn_in=burn_in, thin=thin, num_leapfrog=num_leapfrog,
                chains=chains, init_steps=init_steps)
    for name, v in ints.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an int, got {v!r}")
    if hidden < 1 or chains < 1 or thin < 1 or num_leapfrog < 1 or init_steps < 0:
        raise ValueError(f"need hidden, chains, thin, num_leapfrog >= 1 and init_steps >= 0; got {ints}")
    if burn_in < 8:
        raise ValueError(f"burn_in must be >= 8 (two adaptation phases), got {burn_in}")
    if num_samples // thin < 4:
        raise ValueError(f"need at least 4 kept draws per chain (num_samples // thin), got {num_samples // thin}")
    a, b = noise_prior
    if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
        raise ValueError(f"noise_prior (a, b) must be finite and > 0, got {noise_prior!r}")
    NormalPrior(prior_scale)  # validates the scale
    settings = dict(ints, prior_scale=prior_scale, noise_prior=(float(a), float(b)), seed=seed,
                    step_size=step_size, target_accept=target_accept, jitter=jitter, init_lr=init_lr)

    n, f_in = x.shape
    log_prob = log_posterior(x, y, hidden=hidden, prior_scale=prior_scale, noise_prior=(a, b))
    phase1 = burn_in // 4
    phase2 = burn_in - 2 * phase1
    kept_all, stats = [], []
    for c in range(chains):
        t0 = time.perf_counter()
        chain_seed = 1_000_003 * int(seed) + 7919 * c
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(chain_seed)
            model = MLP(f_in, 1, hidden=(hidden,)).double()
        init = _map_init(log_prob, model, init_steps, init_lr, n)
        init_lp = float(log_prob(init))
        warm = hmc(log_prob, init, step_size=step_size, num_leapfrog=num_leapfrog, num_samples=phase1,
                   burn_in=phase1, seed=chain_seed + 1, adapt_step_size=True, target_accept=target_accept,
                   jitter=jitter)
        s = _metric(warm.samples)

        def log_prob_z(z: Tensor, s: Tensor = s) -> Tensor:
            return log_prob(z * s)

        res = hmc(log_prob_z, warm.samples[-1] / s, step_size=warm.step_size, num_leapfrog=num_leapfrog,
                  num_samples=num_samples, burn_in=phase2, thin=thin, seed=chain_seed + 2, adapt_step_size=True,
                  target_accept=target_accept, jitter=jitter)
        kept_all.append(res.samples * s)
        stats.append((res.acceptance, res.burn_in_acceptance, res.step_size, res.divergences, init_lp,
                      time.perf_counter() - t0))

    theta = torch.stack(kept_all)  # [C, K, D + 1]
    k = theta.shape[1]
    flat = theta.reshape(chains * k, -1)
    shapes = {name: p.shape for name, p in model.named_parameters()}
    sizes = [math.prod(sh) for sh in shapes.values()]
    samples = {name: t.reshape(chains * k, *sh)
               for (name, sh), t in zip(shapes.items(), flat[:, :-1].split(sizes, dim=1))}
    with torch.no_grad():
        means = forward_samples(model, samples, xt)[..., 0]  # [S, N_test]
    log_sigma = flat[:, -1]
    f_chains = means.reshape(chains, k, -1)
    ls_chains = log_sigma.reshape(chains, k)
    rhat_f = split_rhat(f_chains)
    ess_f = bulk_ess(f_chains)
    diag = HMCDiagnostics.pooled(
        f_chains, ls_chains, rhat_f=rhat_f, ess_f=ess_f, seconds=time.perf_counter() - start,
        acceptance=[st[0] for st in stats], burn_in_acceptance=[st[1] for st in stats],
        step_size=[st[2] for st in stats], divergences=[st[3] for st in stats],
        init_log_prob=[st[4] for st in stats], chain_seconds=[st[5] for st in stats])
    return HMCRegressionResult(sample_means=means, noise_vars=torch.exp(2 * log_sigma), diagnostics=diag,
                               samples=samples, chains=chains, settings=settings)


def main(argv: list[str] | None = None) -> None:
    """``python -m bbh.reference.hmc_regression DATASET_FOLDER [--split K] [--key value ...]``: one split's HMC
    reference, printed as JSON (diagnostics, test log-likelihood and RMSE in the original units)."""
    from ..data.uci import load_uci

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("folder")
    p.add_argument("--split", type=int, default=0)
    for name, typ in (("hidden", int), ("num_samples", int), ("burn_in", int), ("thin", int),
                      ("num_leapfrog", int), ("chains", int), ("seed", int), ("init_steps", int),
                      ("prior_scale", float), ("jitter", float), ("target_accept", float)):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None)
    p.add_argument("--noise-prior", nargs=2, type=float, default=None, metavar=("A", "B"))
    args = vars(p.parse_args(argv))
    folder, k = args.pop("folder"), args.pop("split")
    kwargs = {key: v for key, v in args.items() if v is not None}
    if "noise_prior" in kwargs:
        kwargs["noise_prior"] = tuple(kwargs["noise_prior"])
    split = load_uci(folder).split(k)
    res = hmc_regression(split.x_train, split.y_train, split.x_test, **kwargs)
    out = {"split": k, "n_train": int(split.x_train.shape[0]), "settings": res.settings,
           "metrics": res.test_metrics(split.y_test, split.y_std), "diagnostics": res.diagnostics.to_dict(),
           "converged": res.diagnostics.converged(),
           "sigma_mean_original_units": float(res.noise_vars.sqrt().mean()) * float(split.y_std)}
    print(json.dumps(out, indent=2))


__all__ = ["HMCDiagnostics", "HMCRegressionResult", "bulk_ess", "hmc_regression", "log_posterior", "split_rhat"]


if __name__ == "__main__":
    main()
