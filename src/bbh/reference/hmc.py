"""Hamiltonian Monte Carlo: the gold-standard reference posterior for small problems (the toy of Fig. 1).

Sampling ``theta ~ p(theta)`` (unnormalised) by simulating Hamiltonian dynamics with an auxiliary momentum
``r ~ N(0, I)`` (Neal 2011, "MCMC using Hamiltonian dynamics"):

* Hamiltonian: ``H(theta, r) = -log p(theta) + |r|^2 / 2``.
* Leapfrog step of size ``eps`` (volume preserving and reversible)::

      r     <- r + (eps / 2) * grad log p(theta)
      theta <- theta + eps * r
      r     <- r + (eps / 2) * grad log p(theta)

  repeated ``L`` times (the inner half momentum steps are merged into full steps).
* Metropolis correction: the proposal ``(theta', r')`` after ``L`` steps is accepted with probability
  ``min(1, exp(H(theta, r) - H(theta', r')))``; a non-finite ``H'`` (a divergent trajectory) is a rejection.

:func:`hmc` works on a flat parameter vector; :func:`sample_posterior` samples the weights of an
``nn.Module`` under a likelihood and a Normal prior, returning the ``dict[name, Tensor[K, *shape]]`` layout
of bbh's posteriors (evaluate it with :func:`bbh.functional.forward_samples`); the cached HMC reference
of the toy regression (paper Fig. 1) is :mod:`bbh.experiments.toy_reference`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..core.likelihoods import Likelihood
from ..core.priors import NormalPrior

LogProb = Callable[[Tensor], Tensor]


@dataclass
class HMCResult:
    """What :func:`hmc` returns.

    Attributes:
        samples: the kept draws ``[K, D]`` (``K = num_samples // thin``), after burn-in.
        log_probs: ``log p`` of the kept draws ``[K]``.
        acceptance: mean Metropolis acceptance probability ``min(1, exp(H_old - H_new))`` after burn-in.
        burn_in_acceptance: the same during burn-in (nan if ``burn_in == 0``).
        step_size: the step size used after burn-in (the adapted one if ``adapt_step_size``).
        divergences: post-burn-in trajectories whose energy error was non-finite or above 1000.
        seconds: wall-clock time of the whole run.
    """

    samples: Tensor
    log_probs: Tensor
    acceptance: float
    burn_in_acceptance: float
    step_size: float
    divergences: int
    seconds: float


def _value_and_grad(log_prob: LogProb, theta: Tensor) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        t = theta.detach().requires_grad_(True)
        value = log_prob(t)
        (grad,) = torch.autograd.grad(value, t)
    return value.detach(), grad


def hmc(log_prob: LogProb, init: Tensor, *, step_size: float, num_leapfrog: int, num_samples: int,
        burn_in: int = 0, thin: int = 1, seed: int = 0, adapt_step_size: bool = False,
        target_accept: float = 0.8, jitter: float = 0.0) -> HMCResult:
    """Hamiltonian Monte Carlo with an identity mass matrix on a flat parameter vector.

    Runs ``burn_in + num_samples`` iterations of ``num_leapfrog`` leapfrog steps each (see the module
    docstring for H, the leapfrog and the acceptance rule) and keeps every ``thin``-th post-burn-in state.

    Step-size adaptation (``adapt_step_size=True``) happens during burn-in only, so the kept chain is a
    proper Markov chain with a fixed kernel: the dual averaging of Hoffman & Gelman (2014, Alg. 5) with
    their constants (gamma = 0.05, t0 = 10, kappa = 0.75, mu = log(10 eps0)) drives the mean acceptance
    probability to ``target_accept``,

        Hbar_m = (1 - 1/(m + t0)) Hbar_{m-1} + (target - alpha_m) / (m + t0)
        log eps_m = mu - sqrt(m) / gamma * Hbar_m
        log epsbar_m = m^-kappa log eps_m + (1 - m^-kappa) log epsbar_{m-1},

    and sampling uses ``epsbar`` at the end of burn-in.

    ``jitter > 0`` draws each iteration's step size uniformly from ``eps * [1 - jitter, 1 + jitter]``
    (Neal 2011, Sec. 5.4.2.2). A fixed trajectory length ``L * eps`` close to half the period of some
    direction (``pi * sd`` for a Gaussian) maps ``theta -> -theta`` there: the mean mixes (antithetically),
    the variance does not; jitter breaks that resonance.

    Args:
        log_prob: unnormalised log density, ``Tensor[D] -> scalar``, differentiable by autograd.
        init: the starting point ``[D]``; its dtype is the dtype of the chain (float64 recommended).
        step_size: leapfrog step size eps (the initial one if adapting).
        num_leapfrog: leapfrog steps per iteration L (trajectory length L * eps).
        num_samples: iterations after burn-in.
        burn_in: iterations discarded first (and used for adaptation).
        thin: keep every ``thin``-th post-burn-in state.
        seed: seeds a private ``torch.Generator``: equal seeds give identical chains (global RNG untouched).
        adapt_step_size: dual-averaging adaptation of eps during burn-in.
        target_accept: the acceptance probability adaptation aims at.
        jitter: relative half-width of the per-iteration random step size, in [0, 1).
    """
    if step_size <= 0 or not math.isfinite(step_size):
        raise ValueError(f"step_size must be finite and > 0, got {step_size!r}")
    if num_leapfrog < 1 or num_samples < 1 or burn_in < 0 or thin < 1:
        raise ValueError(f"need num_leapfrog >= 1, num_samples >= 1, burn_in >= 0, thin >= 1; got "
                         f"{num_leapfrog}, {num_samples}, {burn_in}, {thin}")
    if init.dim() != 1 or not init.dtype.is_floating_point:
        raise ValueError(f"init must be a flat floating-point vector [D], got {tuple(init.shape)} {init.dtype}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if adapt_step_size and not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    start = time.perf_counter()
    gen = torch.Generator(device=init.device).manual_seed(int(seed))
    dtype, device = init.dtype, init.device
    theta = init.detach().clone()
    value, grad = _value_and_grad(log_prob, theta)
    if not torch.isfinite(value):
        raise ValueError(f"log_prob is not finite at init: {float(value)}")

    eps = float(step_size)
    # dual-averaging state (Hoffman & Gelman 2014, Alg. 5)
    mu, gamma, t0, kappa = math.log(10 * eps), 0.05, 10.0, 0.75
    h_bar, log_eps_bar = 0.0, 0.0

    kept, kept_lp = [], []
    acc_burn = acc_sample = 0.0
    divergences = 0
    for it in range(burn_in + num_samples):
        r = torch.randn(theta.shape, generator=gen, dtype=dtype, device=device)
        h_old = -float(value) + 0.5 * float(r @ r)
        e = eps
        if jitter:
            e = eps * (1 + jitter * (2 * float(torch.rand((), generator=gen, dtype=torch.float64)) - 1))
        th, val, g = theta, value, grad
        r = r + 0.5 * e * g
        for step in range(num_leapfrog):
            th = th + e * r
            val, g = _value_and_grad(log_prob, th)
            if not torch.isfinite(val):  # a non-finite gradient makes the next value non-finite
                break
            r = r + (e if step < num_leapfrog - 1 else 0.5 * e) * g
        h_new = -float(val) + 0.5 * float(r @ r)
        delta = h_old - h_new  # log acceptance ratio
        alpha = math.exp(min(0.0, delta)) if math.isfinite(delta) else 0.0
        log_u = math.log(float(torch.rand((), generator=gen, dtype=torch.float64)))
        if math.isfinite(delta) and log_u < delta:
            theta, value, grad = th, val, g
        sampling = it >= burn_in
        if sampling:
            acc_sample += alpha
            divergences += int(not math.isfinite(delta) or delta < -1000)
            if (it - burn_in + 1) % thin == 0:
                kept.append(theta)
                kept_lp.append(value)
        else:
            acc_burn += alpha
            if adapt_step_size:
                m = it + 1
                h_bar = (1 - 1 / (m + t0)) * h_bar + (target_accept - alpha) / (m + t0)
                log_eps = mu - math.sqrt(m) / gamma * h_bar
                w = m ** -kappa
                log_eps_bar = w * log_eps + (1 - w) * log_eps_bar
                eps = math.exp(log_eps) if it < burn_in - 1 else math.exp(log_eps_bar)
    samples = torch.stack(kept) if kept else theta.new_zeros((0, theta.numel()))
    log_probs = torch.stack(kept_lp) if kept_lp else theta.new_zeros((0,))
    return HMCResult(samples=samples, log_probs=log_probs, acceptance=acc_sample / num_samples,
                     burn_in_acceptance=acc_burn / burn_in if burn_in else float("nan"), step_size=eps,
                     divergences=divergences, seconds=time.perf_counter() - start)


def effective_sample_size(chain: Tensor) -> Tensor:
    """Effective number of independent draws of each column of ``chain`` ``[K, ...]`` (one chain).

    ``ESS = K / (1 + 2 sum_t rho_t)`` with the autocorrelations ``rho_t`` summed in pairs
    ``rho_{2m} + rho_{2m+1}`` while the pair is positive (Geyer's initial positive sequence), capped at
    ``K log10 K`` as Stan does (antithetic HMC chains can exceed K).
    """
    k = chain.shape[0]
    if k < 4:
        raise ValueError(f"need at least 4 draws, got {k}")
    z = chain.double().reshape(k, -1)
    z = z - z.mean(0)
    n = 1 << (2 * k - 1).bit_length()
    spec = torch.fft.rfft(z, n=n, dim=0)
    acov = torch.fft.irfft(spec * spec.conj(), n=n, dim=0)[:k]
    rho = acov / acov[0].clamp_min(1e-300)
    ess = torch.empty(z.shape[1], dtype=torch.float64)
    for j in range(z.shape[1]):
        total, m = 0.0, 0
        while 2 * m + 1 < k:
            pair = float(rho[2 * m, j] + rho[2 * m + 1, j])
            if pair <= 0:
                break
            total += pair
            m += 1
        tau = max(2 * total - 1, 1.0 / math.log10(k))  # 1 + 2 sum_{t>=1} rho_t, with rho_0 = 1
        ess[j] = k / tau
    return ess.reshape(chain.shape[1:])


# --------------------------------------------------------------------------------------------------------
# posteriors of nn.Module parameters


Unflatten = Callable[[Tensor], dict[str, Tensor]]


def module_log_prob(model: nn.Module, x: Tensor, y: Tensor, likelihood: Likelihood, prior_scale: float = 1.0,
                    dtype: torch.dtype = torch.float64) -> tuple[LogProb, Tensor, Unflatten]:
    """The log posterior density of all of ``model``'s parameters on the full data ``(x, y)``.

    ``log p(theta | x, y) = sum_n log p(y_n | f(x_n; theta)) + sum_i log N(theta_i; 0, prior_scale^2) + const``
    over every parameter (weights and biases), with ``f`` evaluated by ``torch.func.functional_call`` on the
    flat vector unflattened into the module's parameter shapes (buffers stay the module's own).

    Returns:
        ``(log_prob, init, unflatten)``: the density of a flat ``Tensor[D]`` (in ``dtype``), the model's
        current parameters as such a vector, and the map from a batch of flat vectors ``[..., D]`` to
        ``dict[name, Tensor[..., *shape]]``.
    """
    prior = NormalPrior(prior_scale)  # validates the scale
    net = copy.deepcopy(model).to(dtype)
    named = [(n, p) for n, p in net.named_parameters()]
    if not named:
        raise ValueError("model has no parameters to sample")
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    init = torch.cat([p.detach().reshape(-1) for _, p in named])
    xd = x.to(dtype) if x.dtype.is_floating_point else x
    yd = y.to(dtype) if y.dtype.is_floating_point else y

    def unflatten(flat: Tensor) -> dict[str, Tensor]:
        lead = flat.shape[:-1]
        return {n: c.reshape(*lead, *s) for n, c, s in zip(names, flat.split(sizes, dim=-1), shapes)}

    # sum_i log N(theta_i; 0, s^2) = -|theta|^2 / (2 s^2) - D (log s + log(2 pi) / 2): one dot product
    # instead of NormalPrior.log_prob's elementwise graph (fewer autograd nodes: this runs per leapfrog step)
    const = -init.numel() * (math.log(prior.scale) + 0.5 * math.log(2 * math.pi))
    inv_var = 1.0 / prior.scale**2

    def log_prob(theta: Tensor) -> Tensor:
        out = functional_call(net, unflatten(theta), (xd,))
        return likelihood.log_prob(out, yd).sum() + (const - 0.5 * inv_var * torch.dot(theta, theta))

    return log_prob, init, unflatten


def posterior_hmc(model: nn.Module, x: Tensor, y: Tensor, likelihood: Likelihood, prior_scale: float = 1.0, *,
                  step_size: float = 0.01, num_leapfrog: int = 20, num_samples: int = 1000, burn_in: int = 500,
                  thin: int = 1, seed: int = 0, adapt_step_size: bool = False, target_accept: float = 0.8,
                  jitter: float = 0.0, init: Tensor | None = None, dtype: torch.dtype = torch.float64,
                  out_dtype: torch.dtype | None = None) -> tuple[dict[str, Tensor], HMCResult]:
    """:func:`sample_posterior` that also returns the :class:`HMCResult` (acceptance, step size, timing)."""
    log_prob, start, unflatten = module_log_prob(model, x, y, likelihood, prior_scale, dtype)
    if init is not None:
        if init.shape != start.shape:
            raise ValueError(f"init must have shape {tuple(start.shape)}, got {tuple(init.shape)}")
        start = init.detach().to(dtype)
    result = hmc(log_prob, start, step_size=step_size, num_leapfrog=num_leapfrog, num_samples=num_samples,
                 burn_in=burn_in, thin=thin, seed=seed, adapt_step_size=adapt_step_size,
                 target_accept=target_accept, jitter=jitter)
    if out_dtype is None:
        out_dtype = next(model.parameters()).dtype
    return {k: v.to(out_dtype) for k, v in unflatten(result.samples).items()}, result


def sample_posterior(model: nn.Module, x: Tensor, y: Tensor, likelihood: Likelihood, prior_scale: float = 1.0,
                     **kwargs: Any) -> dict[str, Tensor]:
    """HMC samples of ``model``'s parameters under ``likelihood`` and a N(0, prior_scale^2) prior.

    The log density is :func:`module_log_prob` on the full data (the data set must be small); the chain
    starts at the model's current parameters (or ``init``, a flat vector) and runs in ``dtype``
    (default float64). Keyword arguments are those of :func:`posterior_hmc` (``step_size=0.01,
    num_leapfrog=20, num_samples=1000, burn_in=500, thin=1, seed=0, adapt_step_size=False,
    jitter=0.0``).

    Returns:
        ``dict[name, Tensor[K, *param_shape]]`` in the model's parameter dtype (``out_dtype`` to change it),
        the layout :func:`bbh.functional.forward_samples` evaluates.
    """
    return posterior_hmc(model, x, y, likelihood, prior_scale, **kwargs)[0]


__all__ = ["HMCResult", "effective_sample_size", "hmc", "module_log_prob", "posterior_hmc",
           "sample_posterior"]
