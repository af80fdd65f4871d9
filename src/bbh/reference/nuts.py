"""The converged reference: NumPyro's NUTS on the UCI regression network's posterior (optional extra ``reference``).

The posterior is :func:`bbh.reference.hmc_regression.log_posterior`'s, term for term (network
``f(x) = w2 . relu(W1 x + b1) + b2``, N(0, s²) on every weight and bias, ``y ~ N(f(x), σ²)``, ``u = log σ``
sampled under a Gamma(a, b) prior on ``1/σ²``), written once more in ``jax.numpy`` so NumPyro can compile it; a
test checks the two log densities agree to 1e-9 at random points. The sampler is the No-U-Turn sampler (Hoffman &
Gelman 2014) with Stan's windowed warm-up (dual-averaging step size, diagonal mass matrix), as implemented by
NumPyro (Phan, Pradhan & Jankowiak 2019): a well-kept implementation instead of growing our own. Each chain starts
from the same short MAP fit of a differently seeded network as :func:`~bbh.reference.hmc_regression.hmc_regression`
(different chains start at different local optima, which is what makes R-hat meaningful).

Diagnostics, on the test predictions f(x) (one per test point) and on log σ: rank-normalised split R-hat and bulk
ESS (:func:`~bbh.reference.hmc_regression.split_rhat`, :func:`~bbh.reference.hmc_regression.bulk_ess`, checked
against ArviZ in the tests) and the divergent transitions counted after warm-up. The bar of a converged reference
(:meth:`NUTSResult.meets_bar`): R-hat ≤ 1.05 on ≥ 99 % of test points, bulk ESS ≥ 200 on every point, no
divergence. Measured costs are in docs/uci.md.

Install with ``pip install -e '.[reference]'`` (NumPyro, JAX on CPU, ArviZ; torch is untouched). JAX keeps its own
thread pool: set ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"`` before the
first import of jax to keep one process on one core of a shared machine (``python -m bbh.reference.nuts`` does).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.io import atomic_write, cache_dir
from ..core.priors import NormalPrior
from ..models import MLP
from .hmc_regression import (
    HMCDiagnostics,
    HMCRegressionResult,
    _check_inputs,
    _map_init,
    bulk_ess,
    log_posterior,
    split_rhat,
)

INSTALL_HINT = "the NUTS reference needs NumPyro and JAX: pip install -e '.[reference]'"
RHAT_BAR, RHAT_SHARE, ESS_BAR = 1.05, 0.99, 200.0


def _jax() -> Any:
    try:
        import jax
        import numpyro  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised where the extra is missing
        raise ImportError(INSTALL_HINT) from err
    jax.config.update("jax_enable_x64", True)
    return jax


def check_available() -> None:
    """Raise the ImportError that names the extra ``reference`` when NumPyro or JAX is missing."""
    _jax()


def regression_potential(x: Tensor, y: Tensor, *, hidden: int, prior_scale: float = 1.0,
                         noise_prior: tuple[float, float] = (1.0, 0.01)) -> Any:
    """``-log p(θ, y | x)`` of θ = [weights and biases, log σ] as a jax function (module docstring; the same
    constants as :func:`~bbh.reference.hmc_regression.log_posterior`)."""
    jax = _jax()
    jnp = jax.numpy
    n, f_in = x.shape
    h = int(hidden)
    a, b = (float(v) for v in noise_prior)
    scale = NormalPrior(prior_scale).scale
    d = h * f_in + 2 * h + 1
    hf = h * f_in
    const = (-0.5 * n * math.log(2 * math.pi) - d * (math.log(scale) + 0.5 * math.log(2 * math.pi))
             + math.log(2) + a * math.log(b) - math.lgamma(a))
    xs, ys = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())

    def potential(theta: Any) -> Any:
        w, u = theta[:d], theta[d]
        w1, b1 = w[:hf].reshape(h, f_in), w[hf:hf + h]
        w2, b2 = w[hf + h:hf + 2 * h], w[d - 1]
        r = ys - (jax.nn.relu(xs @ w1.T + b1) @ w2 + b2)
        tau = jnp.exp(-2 * u)
        log_joint = -0.5 * tau * (r @ r) - n * u - 0.5 * (w @ w) / scale**2 - 2 * a * u - b * tau + const
        return -log_joint

    return potential


@dataclass
class NUTSResult(HMCRegressionResult):
    """:class:`~bbh.reference.hmc_regression.HMCRegressionResult` plus the NUTS tree sizes and the bar."""

    mean_tree_size: float = math.nan
    rhat_f: Tensor | None = None
    ess_f: Tensor | None = None

    def meets_bar(self) -> bool:
        """R-hat ≤ 1.05 on ≥ 99 % of test points, bulk ESS ≥ 200 on every point, no divergence."""
        if self.rhat_f is None or self.ess_f is None:
            return False
        return (float((self.rhat_f <= RHAT_BAR).double().mean()) >= RHAT_SHARE and float(self.ess_f.min()) >= ESS_BAR
                and sum(self.diagnostics.divergences) == 0)


def nuts_sample(potential: Any, init: Tensor, *, warmup: int, samples: int, max_tree_depth: int = 10,
                target_accept: float = 0.8, seed: int = 0) -> tuple[Tensor, dict[str, np.ndarray]]:
    """NumPyro NUTS on ``potential`` (a jax function θ [D] -> -log p(θ)) from ``init`` [C, D], C chains one after
    the other: the draws [C, samples, D] (float64) and per-draw ``diverging``, ``num_steps``, ``accept_prob``
    [C, samples]."""
    jax = _jax()
    from numpyro.infer import MCMC, NUTS

    if init.dim() != 2:
        raise ValueError(f"init must be [chains, D], got {tuple(init.shape)}")
    kernel = NUTS(potential_fn=potential, target_accept_prob=target_accept, max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=init.shape[0],
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), init_params=jax.numpy.asarray(init.detach().double().numpy()),
             extra_fields=("diverging", "num_steps", "accept_prob"))
    theta = torch.from_numpy(np.array(mcmc.get_samples(group_by_chain=True)))
    if theta.dim() == 2:   # one chain
        theta = theta.unsqueeze(0)
    extra = {k: np.array(v).reshape(init.shape[0], samples) for k, v in
             mcmc.get_extra_fields(group_by_chain=True).items()}
    return theta, extra


def nuts_regression(x_train: Tensor, y_train: Tensor, x_test: Tensor, *, hidden: int = 50,
                    prior_scale: float = 1.0, noise_prior: tuple[float, float] = (1.0, 0.01), chains: int = 4,
                    warmup: int = 500, samples: int = 1000, max_tree_depth: int = 10, target_accept: float = 0.8,
                    seed: int = 0, init_steps: int = 3000, init_lr: float = 0.01) -> NUTSResult:
    """NUTS draws of the regression network's posterior and its predictions on ``x_test`` (module docstring).

    ``chains`` run one after the other (one core); each keeps ``samples`` draws after ``warmup`` adaptation
    iterations. ``max_tree_depth`` caps a trajectory at 2^depth - 1 leapfrog steps (on boston split 0 the
    adapted trajectories fill depth 10: shorter caps mixed worse at equal cost, docs/uci.md).
    """
    start = time.perf_counter()
    x, y, xt = _check_inputs(x_train, y_train, x_test)
    for name, v in dict(hidden=hidden, chains=chains, warmup=warmup, samples=samples,
                        max_tree_depth=max_tree_depth, init_steps=init_steps).items():
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "init_steps" else 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if samples < 4:
        raise ValueError(f"need at least 4 draws per chain, got {samples}")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    n, f_in = x.shape
    log_prob = log_posterior(x, y, hidden=hidden, prior_scale=prior_scale, noise_prior=noise_prior)
    inits, models = [], []
    for c in range(chains):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1_000_003 * int(seed) + 7919 * c)
            model = MLP(f_in, 1, hidden=(hidden,)).double()
        inits.append(_map_init(log_prob, model, init_steps, init_lr, n).numpy())
        models.append(model)
    potential = regression_potential(x, y, hidden=hidden, prior_scale=prior_scale, noise_prior=noise_prior)
    theta, extra = nuts_sample(potential, torch.from_numpy(np.stack(inits)), warmup=warmup, samples=samples,
                               max_tree_depth=max_tree_depth, target_accept=target_accept, seed=seed)
    model = models[0]
    shapes = {name: p.shape for name, p in model.named_parameters()}
    sizes = [math.prod(sh) for sh in shapes.values()]
    flat = theta.reshape(chains * samples, -1)
    draws = {name: t.reshape(chains * samples, *sh)
             for (name, sh), t in zip(shapes.items(), flat[:, :-1].split(sizes, dim=1))}
    from ..core.functional import forward_samples
    with torch.no_grad():
        means = forward_samples(model, draws, xt)[..., 0]                                # [C S, N_test]
    f_chains = means.reshape(chains, samples, -1)
    ls_chains = flat[:, -1].reshape(chains, samples)
    rhat_f, ess_f = split_rhat(f_chains), bulk_ess(f_chains)
    seconds = time.perf_counter() - start
    diag = HMCDiagnostics.pooled(
        f_chains, ls_chains, rhat_f=rhat_f, ess_f=ess_f, seconds=seconds,
        acceptance=[float(a) for a in extra["accept_prob"].mean(1)], burn_in_acceptance=[math.nan] * chains,
        step_size=[math.nan] * chains, divergences=[int(d) for d in extra["diverging"].sum(1)],
        init_log_prob=[float(log_prob(torch.from_numpy(i))) for i in inits], chain_seconds=[seconds / chains] * chains)
    settings = dict(sampler="numpyro-nuts", hidden=hidden, prior_scale=prior_scale,
                    noise_prior=tuple(float(v) for v in noise_prior), chains=chains, warmup=warmup, samples=samples,
                    max_tree_depth=max_tree_depth, target_accept=target_accept, seed=seed, init_steps=init_steps,
                    init_lr=init_lr)
    return NUTSResult(sample_means=means, noise_vars=torch.exp(2 * flat[:, -1]), diagnostics=diag, samples=draws,
                      chains=chains, settings=settings, mean_tree_size=float(extra["num_steps"].mean()),
                      rhat_f=rhat_f, ess_f=ess_f)


def cache_path(dataset: str, split: int, settings: dict[str, Any]) -> Path:
    """Where one split's NUTS draws are cached: ``<bbh cache>/nuts/<dataset>-split<k>-<settings hash>.pt`` (the
    user's cache folder, :func:`bbh.io.cache_dir`; never the repository)."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cache_dir("nuts") / f"{dataset}-split{split}-{key}.pt"


def save_draws(path: Path, result: NUTSResult) -> Path:
    """The test predictions f(x_test) [S, N_test], the noise variances [S], the diagnostics and settings, written
    atomically (the weights are not kept: ~3 MB per split instead of ~25 MB)."""
    payload = {"sample_means": result.sample_means, "noise_vars": result.noise_vars, "chains": result.chains,
               "diagnostics": result.diagnostics.to_dict(), "settings": result.settings,
               "rhat_f": result.rhat_f, "ess_f": result.ess_f, "mean_tree_size": result.mean_tree_size}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def main(argv: list[str] | None = None) -> None:
    """``python -m bbh.reference.nuts DATASET_FOLDER [--split K] [--chains 4 --warmup 500 --samples 1000]``: one
    split's NUTS reference, printed as JSON (diagnostics, the bar, test LL and RMSE in the original units); the
    draws of f(x_test) are cached (:func:`cache_path`) unless ``--no-cache``."""
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    torch.set_num_threads(1)
    from ..data.uci import load_uci

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("folder")
    p.add_argument("--split", type=int, default=0)
    for name in ("chains", "warmup", "samples", "max_tree_depth", "seed", "init_steps"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None)
    p.add_argument("--target-accept", dest="target_accept", type=float, default=None)
    p.add_argument("--no-cache", dest="cache", action="store_false", help="do not write the draws to the cache")
    args = vars(p.parse_args(argv))
    cache = args.pop("cache")
    folder, k = args.pop("folder"), args.pop("split")
    split = load_uci(folder).split(k)
    res = nuts_regression(split.x_train, split.y_train, split.x_test,
                          **{key: v for key, v in args.items() if v is not None})
    assert res.rhat_f is not None
    out = {"split": k, "n_train": int(split.x_train.shape[0]), "settings": res.settings,
           "metrics": res.test_metrics(split.y_test, split.y_std), "diagnostics": res.diagnostics.to_dict(),
           "rhat_f_share_le_1_05": float((res.rhat_f <= RHAT_BAR).double().mean()),
           "mean_tree_size": res.mean_tree_size, "meets_bar": res.meets_bar()}
    if cache:
        out["cached"] = str(save_draws(cache_path(Path(folder).name, k, res.settings), res))
    print(json.dumps(out, indent=2))


__all__ = ["NUTSResult", "cache_path", "check_available", "nuts_regression", "nuts_sample", "regression_potential",
           "save_draws"]


if __name__ == "__main__":
    main()
